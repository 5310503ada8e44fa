// Package data reads the datasets qwen-tune trains and evaluates on and turns them into
// token ids and labels: pre-tokenized JSONL records and plain text cut into sliding windows.
// Every error names the file and line and says what to change.
package data
