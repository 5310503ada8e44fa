// Package checkpoints reads and writes the files of a Hugging Face Qwen-7B model directory.
//
// In: safetensors files (one, or shards listed by model.safetensors.index.json), config.json,
// generation_config.json, AutoGPTQ's quantize_config.json and PEFT's adapter_config.json.
// Out: validated headers, tensors memory-mapped on demand (F32, F16, BF16, I32, I64, U8,
// BOOL; floats convertible to float32), typed configs, the weight-name table of the model,
// and atomic, deterministic, optionally sharded safetensors writes. CheckOutDir is the one
// check every command's output directory passes (absent or empty; a killed write's temporary
// files removed), and Inspect validates model, GPTQ, adapter and training-checkpoint
// directories.
//
// Nothing in a file is trusted before it is checked: every error names the file, the tensor
// or key, and what is wrong.
package checkpoints
