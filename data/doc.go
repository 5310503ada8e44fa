// Package data reads the datasets qwen-tune trains, evaluates and calibrates on and turns
// them into token ids and labels. In: conversations (Qwen's JSON list or JSONL, or
// OpenAI-style messages), pre-tokenized JSONL records, and token streams to cut into
// sliding windows. Out: sequences rendered in ChatML with Qwen's or the assistant-only label
// mask, cut to a maximum length, split for validation, shuffled per epoch or packed into rows,
// and calibration samples for quantization. Input must be UTF-8 (a leading byte-order mark is
// accepted); every error names the file and line and says what to change, and Stats says
// what happened to the examples: cut at the maximum length, dropped, empty replies.
package data
