package serve

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// chatPlan is a validated chat request: its prompt and how to answer.
type chatPlan struct {
	prompt    []int
	samp      Sampling
	stops     []string
	funcs     []Function
	tools     bool // the request used tools (answer with tool_calls), not functions
	stream    bool
	withUsage bool
}

// planChat validates req and builds its prompt.
func (s *Server) planChat(req *ChatRequest) (*chatPlan, error) {
	maxTokens := req.MaxTokens
	if req.MaxCompletionTokens != nil {
		maxTokens = req.MaxCompletionTokens
	}
	sp, err := s.settings(req.Temperature, req.TopP, maxTokens, req.Seed, req.N)
	if err != nil {
		return nil, err
	}
	p := &chatPlan{samp: sp, stream: req.Stream, withUsage: req.StreamOptions != nil && req.StreamOptions.IncludeUsage}
	for i := range req.Messages {
		if err := req.Messages[i].parseContent(i); err != nil {
			return nil, err
		}
	}
	if len(req.Stop) > maxStops {
		return nil, badRequest("stop", "at most %d stop strings, got %d", maxStops, len(req.Stop))
	}
	for i, st := range req.Stop {
		if st == "" {
			return nil, badRequest("stop", "stop[%d] is empty", i)
		}
	}
	p.stops = append(p.stops, req.Stop...)
	none := func(raw json.RawMessage) bool { return strings.TrimSpace(string(raw)) == `"none"` }
	switch {
	case len(req.Tools) > 0 && len(req.Functions) > 0:
		return nil, badRequest("tools", "give tools or functions, not both")
	case len(req.Tools) > 0 && !none(req.ToolChoice):
		p.tools = true
		for i, t := range req.Tools {
			if t.Type != "function" || t.Function.Name == "" {
				return nil, badRequest(fmt.Sprintf("tools[%d]", i), "tools[%d] must be {\"type\": \"function\", \"function\": {\"name\": ...}}", i)
			}
			p.funcs = append(p.funcs, t.Function)
		}
	case len(req.Functions) > 0 && !none(req.FunctionCallMode):
		for i, f := range req.Functions {
			if f.Name == "" {
				return nil, badRequest(fmt.Sprintf("functions[%d].name", i), "functions[%d] has no name", i)
			}
		}
		p.funcs = req.Functions
	}
	conv, err := buildConversation(req.Messages, p.funcs)
	if err != nil {
		return nil, err
	}
	tok := s.eng.Tokenizer()
	ids, _ := tok.ChatPrompt(conv.system, conv.history, conv.query, s.eng.MaxWindow())
	if conv.continuation != "" {
		ids = append(ids, tok.EncodeOrdinary(conv.continuation)...)
	}
	p.prompt = ids
	p.samp.Stop = append(tok.StopIDs()[:0:0], tok.StopIDs()...)
	if len(p.funcs) > 0 {
		p.stops = append(p.stops, "Observation:") // the model would invent the tool's answer
	}
	return p, s.fit(ids, &p.samp, "messages")
}

func (s *Server) chat(w http.ResponseWriter, r *http.Request) {
	var req ChatRequest
	if !s.decode(w, r, &req) {
		return
	}
	p, err := s.planChat(&req)
	if err != nil {
		s.requestFailed(w, err)
		return
	}
	rp, ok := s.start(w, r, p.prompt, p.samp, p.stops)
	if !ok {
		return
	}
	id, model := newID("chatcmpl-"), s.eng.ModelID()
	chunk := func(delta *ReplyMessage, finish *string) ChatResponse {
		return ChatResponse{ID: id, Object: "chat.completion.chunk", Created: time.Now().Unix(), Model: model, SystemFingerprint: "qwen-tune",
			Choices: []ChatChoice{{Delta: delta, FinishReason: finish}}}
	}
	if !p.stream || len(p.funcs) > 0 {
		// whole replies (with functions the text is parsed before anything is sent)
		var ev *sse
		if p.stream {
			ev = s.startSSE(w)
			ev.emit(chunk(&ReplyMessage{Role: "assistant", Content: strPtr("")}, nil))
		}
		finish, ids, err := rp.each(func(string) error { return r.Context().Err() })
		if err != nil {
			if ev == nil && finish != "cancelled" {
				s.requestFailed(w, err)
			}
			return
		}
		msg, reason := s.answer(rp.text.String(), finish, p)
		if ev == nil {
			s.writeJSON(w, http.StatusOK, ChatResponse{ID: id, Object: "chat.completion", Created: time.Now().Unix(), Model: model, SystemFingerprint: "qwen-tune",
				Choices: []ChatChoice{{Message: msg, FinishReason: &reason}}, Usage: usage(len(p.prompt), len(ids))})
			return
		}
		msg.Role = ""
		if msg.Content != nil && *msg.Content == "" {
			msg.Content = nil
		}
		for i := range msg.ToolCalls {
			idx := i
			msg.ToolCalls[i].Index = &idx
		}
		ev.emit(chunk(msg, nil))
		ev.emit(chunk(&ReplyMessage{}, &reason))
		if p.withUsage {
			ev.emit(ChatResponse{ID: id, Object: "chat.completion.chunk", Created: time.Now().Unix(), Model: model, SystemFingerprint: "qwen-tune", Choices: []ChatChoice{}, Usage: usage(len(p.prompt), len(ids))})
		}
		ev.done()
		return
	}
	ev := s.startSSE(w)
	ev.emit(chunk(&ReplyMessage{Role: "assistant", Content: strPtr("")}, nil))
	finish, ids, err := rp.each(func(text string) error { return ev.send(chunk(&ReplyMessage{Content: &text}, nil)) })
	if err != nil {
		if finish != "cancelled" {
			ev.emit(map[string]any{"error": APIError{Message: err.Error(), Type: "server_error"}})
		}
		return
	}
	ev.emit(chunk(&ReplyMessage{}, &finish))
	if p.withUsage {
		ev.emit(ChatResponse{ID: id, Object: "chat.completion.chunk", Created: time.Now().Unix(), Model: model, SystemFingerprint: "qwen-tune", Choices: []ChatChoice{}, Usage: usage(len(p.prompt), len(ids))})
	}
	ev.done()
}

// answer is the assistant message for text: with functions, Qwen's parse_response (an
// "Action:"/"Action Input:" pair becomes a call, otherwise the text after "Final Answer:").
func (s *Server) answer(text, finish string, p *chatPlan) (*ReplyMessage, string) {
	if len(p.funcs) == 0 {
		return &ReplyMessage{Role: "assistant", Content: &text}, finish
	}
	i := strings.Index(text, "\nAction:")
	j := strings.Index(text, "\nAction Input:")
	if i >= 0 && i < j {
		k := strings.Index(text, "\nObservation:")
		if k < j {
			text = strings.TrimRight(text, " \t\r\n") + "\nObservation:"
			k = strings.Index(text, "\nObservation:")
		}
		name := strings.TrimSpace(text[i+len("\nAction:") : j])
		args := strings.TrimSpace(text[j+len("\nAction Input:") : k])
		if name != "" {
			content := text[:i]
			call := FunctionCall{Name: name, Arguments: args}
			if p.tools {
				return &ReplyMessage{Role: "assistant", Content: &content, ToolCalls: []ToolCall{{ID: newID("call_"), Type: "function", Function: call}}}, "tool_calls"
			}
			return &ReplyMessage{Role: "assistant", Content: &content, FunctionCall: &call}, "function_call"
		}
	}
	if z := strings.LastIndex(text, "\nFinal Answer: "); z >= 0 {
		text = text[z+len("\nFinal Answer: "):]
	}
	return &ReplyMessage{Role: "assistant", Content: &text}, finish
}

func (s *Server) completions(w http.ResponseWriter, r *http.Request) {
	var req CompletionRequest
	if !s.decode(w, r, &req) {
		return
	}
	sp, err := s.settings(req.Temperature, req.TopP, req.MaxTokens, req.Seed, req.N)
	if err == nil && req.Echo {
		err = badRequest("echo", "echo is not supported")
	}
	var prompt string
	if err == nil {
		var list []string
		switch {
		case json.Unmarshal(req.Prompt, &prompt) == nil:
		case json.Unmarshal(req.Prompt, &list) == nil && len(list) == 1:
			prompt = list[0]
		default:
			err = badRequest("prompt", "prompt must be a string (or an array of one string)")
		}
	}
	if err == nil && prompt == "" {
		err = badRequest("prompt", "prompt is empty")
	}
	tok := s.eng.Tokenizer()
	var ids []int
	if err == nil {
		// special-token text in a prompt stays text, as in chat messages
		ids = tok.EncodeOrdinary(prompt)
		sp.Stop = append(tok.StopIDs()[:0:0], tok.StopIDs()...)
		err = s.fit(ids, &sp, "prompt")
	}
	if err != nil {
		s.requestFailed(w, err)
		return
	}
	rp, ok := s.start(w, r, ids, sp, req.Stop)
	if !ok {
		return
	}
	id, model := newID("cmpl-"), s.eng.ModelID()
	resp := func(text string, finish *string) CompletionResponse {
		return CompletionResponse{ID: id, Object: "text_completion", Created: time.Now().Unix(), Model: model, Choices: []TextChoice{{Text: text, FinishReason: finish}}}
	}
	if !req.Stream {
		finish, gen, err := rp.each(func(string) error { return r.Context().Err() })
		if err != nil {
			if finish != "cancelled" {
				s.requestFailed(w, err)
			}
			return
		}
		out := resp(rp.text.String(), &finish)
		out.Usage = usage(len(ids), len(gen))
		s.writeJSON(w, http.StatusOK, out)
		return
	}
	ev := s.startSSE(w)
	finish, gen, err := rp.each(func(text string) error { return ev.send(resp(text, nil)) })
	if err != nil {
		if finish != "cancelled" {
			ev.emit(map[string]any{"error": APIError{Message: err.Error(), Type: "server_error"}})
		}
		return
	}
	ev.emit(resp("", &finish))
	if req.StreamOptions != nil && req.StreamOptions.IncludeUsage {
		u := resp("", nil)
		u.Choices, u.Usage = []TextChoice{}, usage(len(ids), len(gen))
		ev.emit(u)
	}
	ev.done()
}
