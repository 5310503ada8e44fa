package model

// Checkpointer is a GradExecutor whose training programs can keep only each block's input
// for the backward and compute the block again there (activation checkpointing).
type Checkpointer interface {
	SetCheckpointing(on bool)
}

// TrainingMemory is where an executor's device memory goes in training: the uploaded
// weights (bf16, the trained ones included), the largest activation arena of the training
// programs compiled so far (every activation, the kept gradients and the scratch of one
// step, planned from their lifetimes) and, on an OptimExecutor, the largest optimizer state
// kept there (DeviceParams.Bytes: the trained values, AdamW moments and gradient sums).
type TrainingMemory struct {
	Weights, Activations, Optimizer int64
	Checkpointing                   bool
}

// MemoryReporter is an executor that reports TrainingMemory.
type MemoryReporter interface {
	TrainingMemory() TrainingMemory
}
