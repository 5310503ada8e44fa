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
	if cudaBuild {
		cpu, err := adapterOnGPTQ(m, name)
		if err != nil {
			return nil, err
		}
		if cpu != "" {
			fmt.Fprintf(cmd.ErrOrStderr(), "device: cpu (%s)\n", cpu)
			return func() {}, nil
		}
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

// adapterOnGPTQ decides where a GPTQ model with an adapter on its packed layers runs in a
// CUDA build: the GPU runs an adapter by folding it into the weights, which packed weights
// cannot take, so --device cuda is refused and the default device is the CPU (cpu says why).
// Any other model gives "" and nil.
func adapterOnGPTQ(m *model.Model, device string) (cpu string, err error) {
	if device == "cpu" {
		return "", nil
	}
	for _, s := range m.Projections() {
		if _, packed := model.Unwrap(*s.P).(*model.Int4); !packed || *s.P == model.Unwrap(*s.P) {
			continue
		}
		why := fmt.Sprintf("the adapter applies to %s, a GPTQ layer, and the GPU executor cannot fold an adapter into packed weights", s.Name)
		if device == "cuda" {
			return "", fmt.Errorf("--device cuda: %s; run it with --device cpu (the CPU applies the adapter to the packed layers), or merge the adapter into the floating-point model and quantize the result", why)
		}
		return why, nil
	}
	return "", nil
}

// wantsCUDA reads a --device value: cpu (or empty) or cuda.
func wantsCUDA(device string) (bool, error) {
	switch device {
	case "cpu", "":
		return false, nil
	case "cuda":
		return true, nil
	}
	return false, fmt.Errorf("--device %q: use cpu or cuda", device)
}
