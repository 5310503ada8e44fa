// Package model is the Qwen-7B model definition (qwen.go) and what runs it: loading a
// checkpoint directory (bf16 weights stay bf16, memory-mapped), compiled graphs for a batch
// shape (Runner), KV-cache sessions for generation with dynamic NTK and LogN (Session),
// Qwen's sampling (Sampler, with OpenAI's penalties, log-probabilities and a Constraint that
// masks the logits), sequence scoring (Evaluator) and throughput measurement.
// It also writes random models of the same architecture and file layout (WriteTiny), the
// embedded default that lets every command run without the real weights.
package model
