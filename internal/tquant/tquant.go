// Package tquant writes quantized models for tests of the packages that read them: a model
// directory calibrated with quantize.Calibrate and saved in AutoGPTQ's layout under the
// test's temporary directory. An error fails the test at once.
package tquant

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/qwen-tune/qwen-tune/model"
	"github.com/qwen-tune/qwen-tune/quantize"
)

// Save quantizes the model in src with method and o, calibrated on rows, saves it in a new
// directory and returns that directory and each layer's report.
func Save(t testing.TB, src string, rows [][]int, method quantize.Method, o quantize.Options) (string, []quantize.LayerReport) {
	t.Helper()
	m, err := model.Load(src, model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	layers, reports, err := quantize.Calibrate(context.Background(), m, rows, o, method, nil)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), fmt.Sprintf("int%d", o.Bits))
	if err := quantize.Save(out, src, layers, o); err != nil {
		t.Fatal(err)
	}
	return out, reports
}
