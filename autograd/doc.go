// Package autograd holds the custom gorgonia operations of the Qwen-7B graph, their
// gradients, and graph execution on the CPU and (with the cuda build tag) on NVIDIA GPUs.
//
// The model, LoRA and the loss are one gorgonia.ExprGraph; gradients come from gorgonia's
// symbolic differentiation (Grad) executed by a TapeMachine. go.mod pins the versions this
// needs: gorgonia.org/gorgonia v0.9.18 with go4.org/unsafe/assume-no-moving-gc (without
// which gorgonia panics at start-up on current Go), and gorgonia.org/cu v0.9.6 for the CUDA
// build.
package autograd
