package main

import (
	"fmt"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/qwen-tune/qwen-tune/model"
)

const deviceUsage = "where the model runs: cpu or cuda (default: cuda in a binary built with -tags qtcuda, else cpu)"

func registerDevice(fs *pflag.FlagSet, dst *string) { fs.StringVar(dst, "device", "", deviceUsage) }

// useDevice puts m on the named device and says where it runs (on stderr); the returned
// function releases the device.
func useDevice(cmd *cobra.Command, m *model.Model, name string) (func(), error) {
	switch name {
	case "", "cpu", "cuda":
	default:
		return nil, fmt.Errorf("--device %q: use cpu or cuda", name)
	}
	if m.Quantized() && name != "cuda" {
		// no Int4 kernels on the GPU yet: a GPTQ model runs on the CPU unless cuda is demanded
		fmt.Fprintln(cmd.ErrOrStderr(), "device: cpu (GPTQ Int4 layers have no GPU kernels; --device cuda would fail)")
		return func() {}, nil
	}
	if m.Quantized() {
		return nil, fmt.Errorf("--device cuda: this model is GPTQ Int4, which runs on the CPU only (use --device cpu)")
	}
	exec, err := openExecutor(name)
	if err != nil {
		return nil, err
	}
	if exec == nil {
		fmt.Fprintln(cmd.ErrOrStderr(), "device: cpu")
		return func() {}, nil
	}
	m.Exec = exec
	fmt.Fprintf(cmd.ErrOrStderr(), "device: %s\n", exec.Name())
	return func() {
		m.Exec = nil
		exec.Close()
	}, nil
}

// registerCPUDevice is --device on commands that run on the CPU only (training, calibration,
// evaluation): cuda is refused with a message instead of an unknown flag.
func registerCPUDevice(cmd *cobra.Command, what string) {
	var device string
	cmd.Flags().StringVar(&device, "device", "cpu", "where "+what+" runs: cpu (the GPU executor runs inference only)")
	run := cmd.RunE
	cmd.RunE = func(c *cobra.Command, args []string) error {
		switch device {
		case "cpu", "":
			return run(c, args)
		case "cuda":
			return fmt.Errorf("--device cuda: %s runs on the CPU; the GPU runs inference (chat, generate, serve, bench)", what)
		}
		return fmt.Errorf("--device %q: use cpu or cuda", device)
	}
}
