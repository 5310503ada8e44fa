package serve

// What a chat request asks of the reply's form (tool_choice, response_format) and the
// automaton that constrains decoding to it.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
)

// constraint is the automaton's start for the reply: a ReAct call when a call is required
// (of the named function, or of any), a call or a final answer matching answer when both
// may come, a value of answer alone without functions; nil when nothing is constrained.
func (p *chatPlan) constraint(choice toolChoice, answer *schema, continuation string, tools bool) (state, error) {
	if len(p.funcs) == 0 {
		if answer == nil {
			return nil, nil
		}
		st := startState(answer)
		for _, b := range []byte(continuation) { // the reply continues the assistant's prefix
			if st = st.advance(b); len(st) == 0 {
				return nil, badRequest("messages", "the last assistant message does not start a value response_format allows")
			}
		}
		return st, nil
	}
	forced := choice.mode == "required" || choice.mode == "function"
	if !forced && answer == nil {
		return nil, nil
	}
	if continuation != "" && !p.thought {
		return nil, badRequest("messages", "a last assistant message cannot be continued under a required tool call or a response_format with tools")
	}
	var names []string
	var params []*schema
	for i, f := range p.funcs {
		if choice.mode == "function" && f.Name != choice.name {
			continue
		}
		sch, err := compileSchema(f.Parameters)
		if err != nil {
			param := fmt.Sprintf("functions[%d].parameters", i)
			if tools {
				param = fmt.Sprintf("tools[%d].function.parameters", i)
			}
			return nil, badRequest(param, "%s: %v", param, err)
		}
		name := f.Name
		if f.NameForModel != "" {
			name = f.NameForModel
		}
		names, params = append(names, name), append(params, sch)
	}
	if forced {
		answer = nil
	}
	choices := len(names)
	if answer != nil {
		choices++
	}
	if choices > maxAlternatives {
		param := "functions"
		if tools {
			param = "tools"
		}
		return nil, badRequest(param, "%d functions to choose among under tool_choice or response_format; constrained decoding takes at most %d (name one with tool_choice)", choices, maxAlternatives)
	}
	return callState(names, params, answer, p.thought), nil
}

// toolChoice is a request's tool_choice (or function_call): mode "auto", "none", "required"
// or "function" (name).
type toolChoice struct {
	mode, name string
}

func parseToolChoice(req *ChatRequest) (toolChoice, error) {
	param, raw := "tool_choice", req.ToolChoice
	if len(req.Functions) > 0 || len(raw) == 0 {
		param, raw = "function_call", req.FunctionCallMode
	}
	c := toolChoice{mode: "auto"}
	if len(bytes.TrimSpace(raw)) == 0 || string(bytes.TrimSpace(raw)) == "null" {
		return c, nil
	}
	var mode string
	var named struct {
		Type     string `json:"type"`
		Name     string `json:"name"`
		Function struct {
			Name string `json:"name"`
		} `json:"function"`
	}
	switch {
	case json.Unmarshal(raw, &mode) == nil && (mode == "none" || mode == "auto" || mode == "required" && param == "tool_choice"):
		c.mode = mode
	case json.Unmarshal(raw, &named) == nil && (named.Function.Name != "" || named.Name != "" && param == "function_call"):
		c.mode, c.name = "function", named.Function.Name
		if param == "function_call" {
			c.name = named.Name
		}
	case param == "tool_choice":
		return c, badRequest(param, `tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}`)
	default:
		return c, badRequest(param, `function_call must be "none", "auto" or {"name": ...}`)
	}
	if c.mode == "none" || c.mode == "auto" {
		return c, nil
	}
	funcs := req.Functions
	for _, t := range req.Tools {
		funcs = append(funcs, t.Function)
	}
	if len(funcs) == 0 {
		return c, badRequest(param, "%s %s is only allowed when tools are given", param, compactJSON(raw))
	}
	if c.mode == "function" && !slices.ContainsFunc(funcs, func(f Function) bool { return f.Name == c.name }) {
		return c, badRequest(param, "%s names no tool named %q", param, c.name)
	}
	return c, nil
}

// responseSchema is the schema a response_format asks for: nil for text, any object for
// json_object.
func responseSchema(rf *ResponseFormat) (*schema, error) {
	if rf == nil {
		return nil, nil
	}
	switch rf.Type {
	case "text":
		return nil, nil
	case "json_object":
		return anyObject, nil
	case "json_schema":
		if rf.JSONSchema == nil || len(bytes.TrimSpace(rf.JSONSchema.Schema)) == 0 {
			return nil, badRequest("response_format.json_schema", "response_format of type json_schema needs json_schema: {\"name\": ..., \"schema\": {...}}")
		}
		sch, err := compileSchema(rf.JSONSchema.Schema)
		if err != nil {
			return nil, badRequest("response_format.json_schema.schema", "response_format.json_schema.schema: %v", err)
		}
		return sch, nil
	}
	return nil, badRequest("response_format.type", `response_format.type must be "text", "json_object" or "json_schema", got %q`, rf.Type)
}
