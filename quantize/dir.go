package quantize

import (
	"context"
	"math/rand/v2"
	"path/filepath"

	"github.com/qwen-tune/qwen-tune/model"
)

// Dir quantizes the floating-point model directory src with method and o, calibrated on
// samples, into the new GPTQ directory out, and returns each layer's report.
func Dir(ctx context.Context, src, out string, samples [][]int, o Options, method Method) ([]LayerReport, error) {
	m, err := model.Load(src, model.LoadOptions{})
	if err != nil {
		return nil, err
	}
	defer m.Close()
	layers, reports, err := Calibrate(ctx, m, samples, o, method, nil)
	if err != nil {
		return nil, err
	}
	return reports, Save(out, src, layers, o)
}

// WriteTiny writes a tiny random model (model.WriteTiny with t) into dir/float and its
// quantization with o and method into dir/gptq, calibrated on four samples of 64 random
// byte-token ids (seeded by t.Seed), and returns the GPTQ directory: a GPTQ model to check
// the code that runs one, in tests and in the GPU self-test.
func WriteTiny(dir string, t model.TinyOptions, o Options, method Method) (string, error) {
	src, out := filepath.Join(dir, "float"), filepath.Join(dir, "gptq")
	if _, err := model.WriteTiny(src, t); err != nil {
		return "", err
	}
	r := rand.New(rand.NewPCG(t.Seed, 4))
	samples := make([][]int, 4)
	for i := range samples {
		samples[i] = make([]int, 64)
		for j := range samples[i] {
			samples[i][j] = r.IntN(256)
		}
	}
	_, err := Dir(context.Background(), src, out, samples, o, method)
	return out, err
}
