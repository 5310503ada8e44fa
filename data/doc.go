// Package data reads the datasets qwen-tune trains and evaluates on and turns them into
// token ids and labels: conversations (Qwen's JSON or JSONL, OpenAI-style messages JSONL)
// rendered in ChatML with the training label mask, pre-tokenized JSONL records, and plain
// text cut into sliding windows. Input must be UTF-8 (a leading byte-order mark is
// accepted); every error names the file and line and says what to change, and Stats says
// what happened to the examples: cut at the maximum length, dropped, empty replies.
package data
