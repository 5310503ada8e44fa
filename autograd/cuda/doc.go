// Package cuda runs the graphs of package autograd on one NVIDIA GPU: inference, training
// (gradients, activation checkpointing, the loss by chunks, AdamW on the device) and GPTQ
// calibration.
//
// The executor (exec.go) compiles a gorgonia graph of autograd's ops into a list of kernel
// launches: a plan pass (order, readers, liveness), named fusions, and one emitter per op
// type (the emitters table; gradient ops in grad.go, loss.go, chunkloss.go, embed_grad.go),
// reading each op's settings through autograd's accessors. cuda.go is the runtime and the
// kernel launchers, cublas.go the bf16 products, graph.go CUDA graphs, int4.go GPTQ layers,
// optim.go the trained parameters and their AdamW state kept on the device (ParamSet),
// trained_weights.go those parameters rounded to bf16 where the GEMMs read them,
// recompute.go activation checkpointing, memory.go and peak.go the memory plan with the
// arena's savings (gradx_add.go, attn_scratch.go, dropout_again.go), gptq.go the
// GPTQ solve, selftest*.go every kernel against autograd.Ref. The kernels are CUDA C in
// kernels/, compiled to PTX for compute_80 by kernels/gen.sh and embedded.
//
// Everything reaches CUDA through one driver interface: with -tags qtcuda the CUDA driver
// API (gorgonia.org/cu, which exits the process at start-up when there is no GPU) and cuBLAS
// by dlopen (driver.go); with -tags cudaemu alone an emulation on the CPU (emu.go: the
// kernels run by kernels/emu, the products by autograd/internal/hostblas), which the tests
// use on machines without a GPU. Without either tag the package is empty.
package cuda
