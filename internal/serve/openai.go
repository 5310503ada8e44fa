package serve

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// Message is one chat message as OpenAI's API sends it.
type Message struct {
	Role         string          `json:"role"`
	Content      json.RawMessage `json:"content,omitempty"` // a string, null, or [{"type": "text", "text": ...}]
	Name         string          `json:"name,omitempty"`
	FunctionCall *FunctionCall   `json:"function_call,omitempty"`
	ToolCalls    []ToolCall      `json:"tool_calls,omitempty"`
	ToolCallID   string          `json:"tool_call_id,omitempty"`
	content      string
}

func (m *Message) text() string { return m.content }

// call is the function the assistant message called, from function_call or its first tool call.
func (m *Message) call() *FunctionCall {
	if m.FunctionCall != nil {
		return m.FunctionCall
	}
	if len(m.ToolCalls) > 0 {
		return &m.ToolCalls[0].Function
	}
	return nil
}

// parseContent reads Content into content.
func (m *Message) parseContent(i int) error {
	c := bytes.TrimSpace(m.Content)
	if len(c) == 0 || string(c) == "null" {
		return nil
	}
	if c[0] == '"' {
		return json.Unmarshal(c, &m.content)
	}
	var parts []struct {
		Type string  `json:"type"`
		Text *string `json:"text"`
	}
	if err := json.Unmarshal(c, &parts); err != nil {
		return badRequest(fmt.Sprintf("messages[%d].content", i), "messages[%d].content must be a string or an array of text parts", i)
	}
	for j, p := range parts {
		if p.Type != "text" || p.Text == nil {
			return badRequest(fmt.Sprintf("messages[%d].content[%d]", i, j), "messages[%d].content[%d]: only text parts are supported (type %q)", i, j, p.Type)
		}
		m.content += *p.Text
	}
	return nil
}

// FunctionCall is a call the model makes: the function's name and its arguments as JSON text.
type FunctionCall struct {
	Name      string `json:"name"`
	Arguments string `json:"arguments"`
}

// ToolCall is OpenAI's wrapper of a function call.
type ToolCall struct {
	Index    *int         `json:"index,omitempty"`
	ID       string       `json:"id"`
	Type     string       `json:"type"`
	Function FunctionCall `json:"function"`
}

// Tool is a tool a request offers; only functions exist.
type Tool struct {
	Type     string   `json:"type"`
	Function Function `json:"function"`
}

// Stop is a stop string or a list of them.
type Stop []string

func (s *Stop) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if string(b) == "null" {
		*s = nil
		return nil
	}
	if len(b) > 0 && b[0] == '"' {
		var one string
		if err := json.Unmarshal(b, &one); err != nil {
			return err
		}
		*s = Stop{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return fmt.Errorf("stop must be a string or an array of strings")
	}
	*s = many
	return nil
}

// RequestCommon is what chat and completion requests share: the model, the sampling
// settings, stop strings and streaming.
type RequestCommon struct {
	Model            string         `json:"model"`
	Temperature      *float64       `json:"temperature"`
	TopP             *float64       `json:"top_p"`
	MaxTokens        *int           `json:"max_tokens"`
	Stop             Stop           `json:"stop"`
	Seed             *int64         `json:"seed"`
	N                *int           `json:"n"`
	PresencePenalty  *float64       `json:"presence_penalty"`
	FrequencyPenalty *float64       `json:"frequency_penalty"`
	Stream           bool           `json:"stream"`
	StreamOptions    *StreamOptions `json:"stream_options"`
}

// ChatRequest is a POST /v1/chat/completions body (fields this server does not use, such as
// user or parallel_tool_calls, are accepted and ignored).
type ChatRequest struct {
	RequestCommon
	Messages            []Message       `json:"messages"`
	MaxCompletionTokens *int            `json:"max_completion_tokens"`
	Tools               []Tool          `json:"tools"`
	ToolChoice          json.RawMessage `json:"tool_choice"`
	Functions           []Function      `json:"functions"`
	FunctionCallMode    json.RawMessage `json:"function_call"`
	ResponseFormat      *ResponseFormat `json:"response_format"`
	Logprobs            *bool           `json:"logprobs"`
	TopLogprobs         *int            `json:"top_logprobs"`
}

// ResponseFormat asks for text, any JSON object, or JSON matching a schema.
type ResponseFormat struct {
	Type       string `json:"type"`
	JSONSchema *struct {
		Name   string          `json:"name"`
		Schema json.RawMessage `json:"schema"`
		Strict *bool           `json:"strict"`
	} `json:"json_schema"`
}

// StreamOptions asks for usage in the last chunk.
type StreamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

// CompletionRequest is a POST /v1/completions body.
type CompletionRequest struct {
	RequestCommon
	Prompt   json.RawMessage `json:"prompt"` // a string or an array of one string
	Echo     bool            `json:"echo"`
	Logprobs *int            `json:"logprobs"` // alternatives per token, 0 to 5
}

// Usage counts tokens.
type Usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

// ReplyMessage is the assistant message of a response or the delta of a chunk.
type ReplyMessage struct {
	Role         string        `json:"role,omitempty"`
	Content      *string       `json:"content"`
	FunctionCall *FunctionCall `json:"function_call,omitempty"`
	ToolCalls    []ToolCall    `json:"tool_calls,omitempty"`
}

// Delta is what a chunk adds to the message; the last chunk's is {}.
type Delta struct {
	Role         string        `json:"role,omitempty"`
	Content      *string       `json:"content,omitempty"`
	FunctionCall *FunctionCall `json:"function_call,omitempty"`
	ToolCalls    []ToolCall    `json:"tool_calls,omitempty"`
}

// ChatChoice is a choice of a response (Message) or of a chunk (Delta).
type ChatChoice struct {
	Index        int           `json:"index"`
	Message      *ReplyMessage `json:"message,omitempty"`
	Delta        *Delta        `json:"delta,omitempty"`
	FinishReason *string       `json:"finish_reason"`
	Logprobs     *ChatLogprobs `json:"logprobs"`
}

// ChatLogprobs are the log-probabilities of a reply's tokens.
type ChatLogprobs struct {
	Content []TokenLogprob `json:"content"`
}

// TokenLogprob is one token of a reply: its text, bytes (a token may hold part of a
// character), log-probability and the most likely alternatives.
type TokenLogprob struct {
	Token       string       `json:"token"`
	Logprob     float64      `json:"logprob"`
	Bytes       []int        `json:"bytes"`
	TopLogprobs []TopLogprob `json:"top_logprobs"`
}

// TopLogprob is an alternative token.
type TopLogprob struct {
	Token   string  `json:"token"`
	Logprob float64 `json:"logprob"`
	Bytes   []int   `json:"bytes"`
}

// Response is the body of a response or of one chunk of a stream: Choice is ChatChoice or
// TextChoice.
type Response[Choice any] struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
	// SystemFingerprint is set in chat responses only (text completions have none).
	SystemFingerprint string   `json:"system_fingerprint,omitempty"`
	Choices           []Choice `json:"choices"`
	Usage             *Usage   `json:"usage,omitempty"`
}

// The two instantiations of Response.
type (
	// ChatResponse is a chat.completion or a chat.completion.chunk.
	ChatResponse = Response[ChatChoice]
	// CompletionResponse is a text_completion (or a chunk of one).
	CompletionResponse = Response[TextChoice]
)

// TextChoice is a choice of a text completion.
type TextChoice struct {
	Text         string              `json:"text"`
	Index        int                 `json:"index"`
	Logprobs     *CompletionLogprobs `json:"logprobs"`
	FinishReason *string             `json:"finish_reason"`
}

// CompletionLogprobs are the legacy completions' log-probabilities: per token its text,
// log-probability, alternatives and byte offset in the reply.
type CompletionLogprobs struct {
	Tokens        []string             `json:"tokens"`
	TokenLogprobs []float64            `json:"token_logprobs"`
	TopLogprobs   []map[string]float64 `json:"top_logprobs"`
	TextOffset    []int                `json:"text_offset"`
}

// APIError is OpenAI's error body.
type APIError struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}
