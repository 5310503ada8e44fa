package serve

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/qwen-tune/qwen-tune/model"
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
