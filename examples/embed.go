// Package examples ships the example datasets: chat.jsonl (40 short conversations in the
// OpenAI messages format, used by `qwen-tune demo`) and conversations.json (the same kind of
// data in Qwen's conversations format).
package examples

import _ "embed"

// Chat is chat.jsonl.
//
//go:embed chat.jsonl
var Chat []byte
