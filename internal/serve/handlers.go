package serve

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/qwen-tune/qwen-tune/model"
)

const (
	// minLogprob stands for a log-probability of -Inf, which JSON cannot hold (OpenAI's value).
	minLogprob = -9999
	// maxCompletionLogprobs is the most alternatives the legacy completions' logprobs list.
	maxCompletionLogprobs = 5
)

// chatPlan is a validated chat request: its prompt and how to answer.
type chatPlan struct {
	prompt    []int
	samp      Sampling
	stops     []string
	funcs     []Function
	tools     bool // the request used tools (answer with tool_calls), not functions
	thought   bool // the prompt ends with "Thought:" (after a tool result): the reply continues it
	stream    bool
	withUsage bool
	logprobs  bool
}

// planChat validates req and builds its prompt and, for a required tool call or a
// response_format, the constraint on the reply.
func (s *Server) planChat(req *ChatRequest) (*chatPlan, error) {
	maxTokens := req.MaxTokens
	if req.MaxCompletionTokens != nil {
		maxTokens = req.MaxCompletionTokens
	}
	sp, err := s.settings(&req.RequestCommon, maxTokens)
	if err != nil {
		return nil, err
	}
	p := &chatPlan{samp: sp, stream: req.Stream, withUsage: req.StreamOptions != nil && req.StreamOptions.IncludeUsage}
	for i := range req.Messages {
		if err := req.Messages[i].parseContent(i); err != nil {
			return nil, err
		}
	}
	p.stops = append(p.stops, req.Stop...)
	p.logprobs = req.Logprobs != nil && *req.Logprobs
	if req.TopLogprobs != nil {
		if *req.TopLogprobs < 0 || *req.TopLogprobs > maxTopLogprobs {
			return nil, badRequest("top_logprobs", "top_logprobs must be from 0 to %d, got %d", maxTopLogprobs, *req.TopLogprobs)
		}
		if !p.logprobs {
			return nil, badRequest("top_logprobs", "top_logprobs needs logprobs: true")
		}
		p.samp.TopLogprobs = *req.TopLogprobs
	}
	p.samp.Logprobs = p.logprobs
	choice, err := parseToolChoice(req)
	if err != nil {
		return nil, err
	}
	switch {
	case len(req.Tools) > 0 && len(req.Functions) > 0:
		return nil, badRequest("tools", "give tools or functions, not both")
	case len(req.Tools) > 0 && choice.mode != "none":
		p.tools = true
		for i, t := range req.Tools {
			if t.Type != "function" || t.Function.Name == "" {
				return nil, badRequest(fmt.Sprintf("tools[%d]", i), "tools[%d] must be {\"type\": \"function\", \"function\": {\"name\": ...}}", i)
			}
			p.funcs = append(p.funcs, t.Function)
		}
	case len(req.Functions) > 0 && choice.mode != "none":
		for i, f := range req.Functions {
			if f.Name == "" {
				return nil, badRequest(fmt.Sprintf("functions[%d].name", i), "functions[%d] has no name", i)
			}
		}
		p.funcs = req.Functions
	}
	answer, err := responseSchema(req.ResponseFormat)
	if err != nil {
		return nil, err
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
	p.thought = len(p.funcs) > 0 && strings.HasSuffix(conv.continuation, "\nThought:")
	p.samp.Stop = append(tok.StopIDs()[:0:0], tok.StopIDs()...)
	if len(p.funcs) > 0 {
		p.stops = append(p.stops, "Observation:") // the model would invent the tool's answer
	}
	st, err := p.constraint(choice, answer, conv.continuation, req.Tools != nil)
	if err != nil {
		return nil, err
	}
	if st != nil {
		p.samp.Constraint = newGrammarConstraint(tok, st, p.samp.Stop)
	}
	return p, s.fit(ids, &p.samp, "messages")
}

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

func (s *Server) chat(w http.ResponseWriter, r *http.Request) {
	release, ok := s.admit(w, r)
	if !ok {
		return
	}
	defer release()
	var req ChatRequest
	if !s.decode(w, r, &req) {
		return
	}
	p, err := s.planChat(&req)
	if err != nil {
		s.requestFailed(w, err)
		return
	}
	rp := s.start(r, p.prompt, p.samp, p.stops)
	id, modelID := newID("chatcmpl-"), s.eng.ModelID()
	if !p.stream {
		finish, ids, err := rp.each(func(string, []model.TokenLogprob) error { return r.Context().Err() })
		if err != nil {
			s.failed(w, nil, finish, err, nil)
			return
		}
		msg, reason := s.answer(rp.text.String(), finish, p)
		choice := ChatChoice{Message: msg, FinishReason: &reason}
		if p.logprobs {
			choice.Logprobs = s.chatLogprobs(rp.toks)
		}
		s.writeJSON(w, http.StatusOK, ChatResponse{ID: id, Object: "chat.completion", Created: time.Now().Unix(), Model: modelID, SystemFingerprint: "qwen-tune",
			Choices: []ChatChoice{choice}, Usage: usage(len(p.prompt), len(ids))})
		return
	}
	chunk := func(delta *Delta, finish *string, toks []model.TokenLogprob) ChatResponse {
		c := ChatChoice{Delta: delta, FinishReason: finish}
		if p.logprobs && toks != nil {
			c.Logprobs = s.chatLogprobs(toks)
		}
		return ChatResponse{ID: id, Object: "chat.completion.chunk", Created: time.Now().Unix(), Model: modelID, SystemFingerprint: "qwen-tune", Choices: []ChatChoice{c}}
	}
	ev := s.startSSE(w)
	ev.emit(chunk(&Delta{Role: "assistant", Content: strPtr("")}, nil, nil))
	var view *reactView
	if len(p.funcs) > 0 {
		view = &reactView{thought: p.thought}
	}
	finish, ids, err := rp.each(func(text string, toks []model.TokenLogprob) error {
		if view != nil {
			text = view.push(text)
		}
		if text == "" && (!p.logprobs || len(toks) == 0) {
			return nil
		}
		return ev.send(chunk(&Delta{Content: &text}, nil, toks))
	})
	if err != nil {
		s.failed(w, ev, finish, err, chunk(&Delta{}, strPtr("length"), nil))
		return
	}
	if view != nil {
		// the call, or what the stream held back, once the whole reply is known
		msg, reason := s.answer(rp.text.String(), finish, p)
		finish = reason
		d := &Delta{FunctionCall: msg.FunctionCall, ToolCalls: msg.ToolCalls}
		if c := textOf(msg.Content); strings.HasPrefix(c, view.shown) && len(c) > len(view.shown) {
			d.Content = strPtr(c[len(view.shown):])
		}
		for i := range d.ToolCalls {
			d.ToolCalls[i].Index = &i
		}
		if d.Content != nil || d.FunctionCall != nil || len(d.ToolCalls) > 0 {
			ev.emit(chunk(d, nil, nil))
		}
	}
	ev.emit(chunk(&Delta{}, &finish, nil))
	if p.withUsage {
		ev.emit(ChatResponse{ID: id, Object: "chat.completion.chunk", Created: time.Now().Unix(), Model: modelID, SystemFingerprint: "qwen-tune", Choices: []ChatChoice{}, Usage: usage(len(p.prompt), len(ids))})
	}
	ev.done()
}

// reactView is what a client may be shown of a ReAct reply while it is generated: a plain
// answer as it comes (holding back what may start "\nAction:"), the answer after "Final
// Answer: ", and the thought before a call once "\nAction:" shows it is one.
type reactView struct {
	text    strings.Builder
	shown   string
	thought bool // the reply is still in its thought (it began "Thought:", or the prompt ends so)
	plain   bool // the reply is not ReAct text
}

// push adds piece and returns the content to show now.
func (v *reactView) push(piece string) string {
	v.text.WriteString(piece)
	vis := v.visible(v.text.String())
	if !strings.HasPrefix(vis, v.shown) {
		return ""
	}
	out := vis[len(v.shown):]
	v.shown = vis
	return out
}

func (v *reactView) visible(text string) string {
	if i := strings.Index(text, "\nAction:"); i >= 0 {
		return callContent(text[:i])
	}
	if !v.plain {
		if z := strings.LastIndex(text, "\nFinal Answer: "); z >= 0 {
			return text[z+len("\nFinal Answer: "):]
		}
		t := strings.TrimLeft(text, " \n")
		if v.thought || strings.HasPrefix(t, "Thought:") || strings.HasPrefix("Thought:", t) {
			v.thought = true
			return ""
		}
		v.plain = true
	}
	return text[:len(text)-heldFor(text, "\nAction:")]
}

// heldFor is the length of the longest end of text that may begin marker.
func heldFor(text, marker string) int {
	for n := min(len(marker)-1, len(text)); n > 0; n-- {
		if strings.HasSuffix(text, marker[:n]) {
			return n
		}
	}
	return 0
}

// callContent is the content of a reply that calls a function, as Qwen's API gives it: the
// text before "\nAction:" after its "Thought: " label, trimmed.
func callContent(text string) string {
	if t := strings.Index(text, "Thought: "); t >= 0 {
		text = text[t+len("Thought: "):]
	}
	return strings.TrimSpace(text)
}

// logprobEntry is a token's text, log-probability (finite, as JSON needs) and bytes.
func (s *Server) logprobEntry(id int, lp float64) (string, float64, []int) {
	b, err := s.eng.Tokenizer().TokenBytes(id)
	if err != nil {
		b = nil // an id the tokenizer does not have: no bytes
	}
	ints := make([]int, len(b))
	for i, x := range b {
		ints[i] = int(x)
	}
	if math.IsInf(lp, -1) || math.IsNaN(lp) {
		lp = minLogprob
	}
	return string(b), lp, ints
}

// completionLogprobs are the legacy completions' logprobs for toks; offset is the reply's
// bytes before them, advanced past them.
func (s *Server) completionLogprobs(toks []model.TokenLogprob, offset *int) *CompletionLogprobs {
	out := &CompletionLogprobs{Tokens: []string{}, TokenLogprobs: []float64{}, TopLogprobs: []map[string]float64{}, TextOffset: []int{}}
	for _, t := range toks {
		text, lp, b := s.logprobEntry(t.ID, t.Logprob)
		top := map[string]float64{}
		for _, a := range t.Top {
			at, alp, _ := s.logprobEntry(a.ID, a.Logprob)
			top[at] = alp
		}
		out.Tokens, out.TokenLogprobs = append(out.Tokens, text), append(out.TokenLogprobs, lp)
		out.TopLogprobs, out.TextOffset = append(out.TopLogprobs, top), append(out.TextOffset, *offset)
		*offset += len(b)
	}
	return out
}

// chatLogprobs are OpenAI's logprobs.content for toks.
func (s *Server) chatLogprobs(toks []model.TokenLogprob) *ChatLogprobs {
	entry := s.logprobEntry
	out := &ChatLogprobs{Content: make([]TokenLogprob, 0, len(toks))}
	for _, t := range toks {
		e := TokenLogprob{TopLogprobs: make([]TopLogprob, 0, len(t.Top))}
		e.Token, e.Logprob, e.Bytes = entry(t.ID, t.Logprob)
		for _, a := range t.Top {
			var alt TopLogprob
			alt.Token, alt.Logprob, alt.Bytes = entry(a.ID, a.Logprob)
			e.TopLogprobs = append(e.TopLogprobs, alt)
		}
		out.Content = append(out.Content, e)
	}
	return out
}

// answer is the assistant message for text: with functions, Qwen's parse_response (an
// "Action:"/"Action Input:" pair becomes a call, its content the thought before it;
// otherwise the text after "Final Answer:").
func (s *Server) answer(text, finish string, p *chatPlan) (*ReplyMessage, string) {
	if len(p.funcs) == 0 {
		return &ReplyMessage{Role: "assistant", Content: &text}, finish
	}
	if p.thought {
		text = "Thought:" + text
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
			content := callContent(text[:i])
			call := FunctionCall{Name: name, Arguments: args}
			if p.tools {
				return &ReplyMessage{Role: "assistant", Content: &content, ToolCalls: []ToolCall{{ID: newID("call_"), Type: "function", Function: call}}}, "tool_calls"
			}
			return &ReplyMessage{Role: "assistant", Content: &content, FunctionCall: &call}, "function_call"
		}
	}
	if z := strings.LastIndex(text, "\nFinal Answer: "); z >= 0 {
		text = text[z+len("\nFinal Answer: "):]
	} else if p.thought {
		text = strings.TrimPrefix(text, "Thought:")
	}
	return &ReplyMessage{Role: "assistant", Content: &text}, finish
}

func (s *Server) completions(w http.ResponseWriter, r *http.Request) {
	release, ok := s.admit(w, r)
	if !ok {
		return
	}
	defer release()
	var req CompletionRequest
	if !s.decode(w, r, &req) {
		return
	}
	sp, err := s.settings(&req.RequestCommon, req.MaxTokens)
	if err == nil && req.Echo {
		err = badRequest("echo", "echo is not supported")
	}
	if err == nil && req.Logprobs != nil {
		if *req.Logprobs < 0 || *req.Logprobs > maxCompletionLogprobs {
			err = badRequest("logprobs", "logprobs must be from 0 to %d, got %d", maxCompletionLogprobs, *req.Logprobs)
		}
		sp.Logprobs, sp.TopLogprobs = true, *req.Logprobs
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
	rp := s.start(r, ids, sp, req.Stop)
	id, modelID := newID("cmpl-"), s.eng.ModelID()
	offset := 0 // the text's bytes before the next token, for text_offset
	resp := func(text string, finish *string, toks []model.TokenLogprob) CompletionResponse {
		c := TextChoice{Text: text, FinishReason: finish}
		if sp.Logprobs && toks != nil {
			c.Logprobs = s.completionLogprobs(toks, &offset)
		}
		return CompletionResponse{ID: id, Object: "text_completion", Created: time.Now().Unix(), Model: modelID, Choices: []TextChoice{c}}
	}
	if !req.Stream {
		finish, gen, err := rp.each(func(string, []model.TokenLogprob) error { return r.Context().Err() })
		if err != nil {
			s.failed(w, nil, finish, err, nil)
			return
		}
		out := resp(rp.text.String(), &finish, rp.toks)
		out.Usage = usage(len(ids), len(gen))
		s.writeJSON(w, http.StatusOK, out)
		return
	}
	ev := s.startSSE(w)
	finish, gen, err := rp.each(func(text string, toks []model.TokenLogprob) error {
		if text == "" && (!sp.Logprobs || len(toks) == 0) {
			return nil
		}
		return ev.send(resp(text, nil, toks))
	})
	if err != nil {
		s.failed(w, ev, finish, err, resp("", strPtr("length"), nil))
		return
	}
	ev.emit(resp("", &finish, nil))
	if req.StreamOptions != nil && req.StreamOptions.IncludeUsage {
		u := resp("", nil, nil)
		u.Choices, u.Usage = []TextChoice{}, usage(len(ids), len(gen))
		ev.emit(u)
	}
	ev.done()
}

// textOf is *p, or "" for nil.
func textOf(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// failed ends a reply that did not complete. A client that left gets nothing; one whose
// reply the shutdown ended gets 503, or on a stream the last chunk (last, with its
// finish_reason), an error event and [DONE]; a failed generation gets 500 or an error event.
func (s *Server) failed(w http.ResponseWriter, ev *sse, finish string, err error, last any) {
	shutdown := finish == "cancelled" && s.stopping.Load()
	switch {
	case finish == "cancelled" && !shutdown:
	case ev == nil && shutdown:
		s.writeError(w, http.StatusServiceUnavailable, "server_error", "", "server_shutting_down", "the server is shutting down: the reply was cancelled; retry on another server or later")
	case ev == nil:
		s.requestFailed(w, err)
	case shutdown:
		ev.emit(last)
		ev.emit(map[string]any{"error": APIError{Message: "the server is shutting down: the reply was cut short", Type: "server_error", Code: strPtr("server_shutting_down")}})
		ev.done()
	default:
		ev.emit(map[string]any{"error": APIError{Message: err.Error(), Type: "server_error"}})
	}
}
