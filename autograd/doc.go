// Package autograd holds the custom gorgonia operations of the Qwen-7B graph and their
// gradients.
//
// In: gorgonia nodes (activations float32, or float64 in gradient checks; weights float32 or
// bf16 kept as uint16) and a Step with the run-time data (token ids, labels, positions, key
// mask, rotary bases, KV cache). Out: nodes whose gradients gorgonia's symbolic Grad can
// take, executed by a Machine (machine.go: gorgonia's TapeMachine order, but each value
// dropped after its last reader and the ops' buffers recycled through a pool) or by
// gorgonia's TapeMachine.
//
// One file per op, math and shapes in its header comment, forward and backward side by side:
// RMSNorm, Rotary, Attention, SwiGLU, Embedding, EmbeddingRows and SelectRows (gather),
// Linear and ScaledLinear, Int4Linear (GPTQ weights), PlaceColumns, Dropout, CrossEntropy,
// SplitHeads, and Checkpoint (a block boundary of a training graph, an identity). A backward is itself made of ops of this package, added to the same graph by
// SymDiff; an op that needs several gradients from one pass (attention) packs them and picks
// them apart. Frozen weights (bf16 always) get no gradient node.
//
// Ops are plain parameter structs whose Do runs the CPU code; their float32 matrix products
// run on internal/matmul (AVX-512 or AVX2 assembly where the CPU has it, plain Go elsewhere).
// A graph is built once per shape and run again for every Step, which the ops read through a
// pointer. The op types are exported, with read-only accessors for their settings
// (describe.go), and Ref (reference.go) gives each op's CPU computation on plain values:
// package autograd/cuda, the GPU executor, compiles the same graphs by op type and checks its
// kernels against Ref, so model code never changes.
//
// go.mod pins what this needs: gorgonia.org/gorgonia v0.9.18 with
// go4.org/unsafe/assume-no-moving-gc (without which gorgonia panics at start-up on current
// Go), and gorgonia.org/cu v0.9.6 for the CUDA build.
package autograd
