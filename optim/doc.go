// Package optim updates trainable parameters from their gradients: AdamW with PyTorch's
// semantics, global gradient-norm clipping and learning-rate schedules (linear warmup then
// cosine, or constant), with state that saves and restores exactly for resuming.
package optim
