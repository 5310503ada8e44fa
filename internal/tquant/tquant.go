// Package tquant writes quantized models for tests of the packages that read them: a model
// directory calibrated with quantize.Calibrate and saved in AutoGPTQ's layout under the
// test's temporary directory. An error fails the test at once.
package tquant

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/qwen-tune/qwen-tune/quantize"
)

// Save quantizes the model in src with method and o, calibrated on rows, saves it in a new
// directory and returns that directory and each layer's report.
func Save(t testing.TB, src string, rows [][]int, method quantize.Method, o quantize.Options) (string, []quantize.LayerReport) {
	t.Helper()
	out := filepath.Join(t.TempDir(), fmt.Sprintf("int%d", o.Bits))
	reports, err := quantize.Dir(context.Background(), src, out, rows, o, method)
	if err != nil {
		t.Fatal(err)
	}
	return out, reports
}
