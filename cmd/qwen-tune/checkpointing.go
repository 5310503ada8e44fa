package main

import (
	"github.com/spf13/pflag"

	"github.com/qwen-tune/qwen-tune/model"
)

// registerCheckpointFlag defines --checkpoint-activations (on by default) on f.
func registerCheckpointFlag(f *pflag.FlagSet) *bool {
	return f.Bool("checkpoint-activations", true, "with --device cuda: keep only each block's input for the backward and compute the block again there (less device memory for about a third more forward work; --checkpoint-activations=false keeps every activation); the CPU keeps what its backward reads either way")
}

// setCheckpointing applies --checkpoint-activations to an executor that runs training graphs.
func setCheckpointing(exec model.Executor, on bool) {
	if c, ok := exec.(model.Checkpointer); ok {
		c.SetCheckpointing(on)
	}
}
