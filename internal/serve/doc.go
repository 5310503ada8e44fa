// Package serve is qwen-tune's OpenAI-compatible HTTP API and web chat page:
// /v1/chat/completions (streaming, stop strings, seed, penalties, logprobs, tools and
// functions through Qwen's ReAct prompt with tool_choice, response_format), /v1/completions,
// /v1/models, /health, and the page at /. A required tool call or a response_format is kept
// by constrained decoding: a byte automaton over JSON and a JSON-schema subset (schema.go,
// grammar.go) masks the tokens that cannot continue the reply (mask.go). Requests take one of
// a bounded number of slots before their bodies are read (a full server answers 429);
// generations run one at a time on the goroutine that calls Server.Work (the one that owns
// the model and, on a GPU, the device's thread); a client that goes away cancels its
// generation and frees its slot.
package serve
