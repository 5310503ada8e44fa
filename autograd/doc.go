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
// Ops are plain parameter structs whose Do runs the CPU code; their float32 matrix products run
// on internal/matmul (AVX-512 or AVX2 assembly where the CPU has it, plain Go elsewhere). A graph is built once
// per shape and run again for every Step, which the ops read through a pointer. The GPU
// executor (cuda_exec.go, under the qtcuda or cudaemu build tag) walks the same graph and
// turns each node, by its op type, into launches of the kernels in kernels/ (cuda.go: the
// runtime and launchers; cublas.go: the cuBLAS products; cuda_graph.go: CUDA graphs;
// cuda_int4.go: GPTQ layers; cuda_optim.go: a run's trained parameters and their AdamW
// state kept on the device; cuda_recompute.go: activation checkpointing of training
// programs; cuda_memory.go: their memory plan; cuda_selftest.go: every kernel against its
// CPU twin), so model
// code never changes. All of
// it reaches CUDA through one driver interface (cuda.go): the CUDA driver API and cuBLAS by
// dlopen with -tags qtcuda (cuda_driver.go), or their emulation on the CPU with -tags
// cudaemu alone (cuda_emu.go: kernels/emu runs the kernels, internal/hostblas the products).
//
// go.mod pins what this needs: gorgonia.org/gorgonia v0.9.18 with
// go4.org/unsafe/assume-no-moving-gc (without which gorgonia panics at start-up on current
// Go), and gorgonia.org/cu v0.9.6 for the CUDA build.
package autograd
