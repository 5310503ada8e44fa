//go:build cudaemu || qtcuda

package cuda

import (
	"testing"

	G "gorgonia.org/gorgonia"

	"github.com/qwen-tune/qwen-tune/autograd"
)

// SetChunkedLoss switches the fusion "lm_head + cross-entropy by chunks" on or off, with rows
// rows per chunk (0: from the vocabulary), until the test ends.
func SetChunkedLoss(t testing.TB, on bool, rows int) {
	on0, rows0 := chunkedLoss, lossChunkRows
	chunkedLoss, lossChunkRows = on, rows
	t.Cleanup(func() { chunkedLoss, lossChunkRows = on0, rows0 })
}

// LossChunk is the rows of a chunk of the fused loss for rows of vocab logits.
func LossChunk(rows, vocab int) int { return lossChunk(rows, vocab) }

// SetArenaSavings switches the arena's savings that change no result (SwiGLU's gradients
// in place, values kept in bf16) on or off until the test ends.
func SetArenaSavings(t testing.TB, on bool) {
	sw, bf := swigluGradInPlace, keepBF16
	swigluGradInPlace, keepBF16 = on, on
	t.Cleanup(func() { swigluGradInPlace, keepBF16 = sw, bf })
}

// OpCase runs the op table's case named name (optable.go).
func OpCase(d *Device, name string, seed uint64) []Check { return opCase(d, name, seed) }

// OpTableRow reports whether the device's op table has a row for the case named name.
func OpTableRow(name string) bool { _, ok := opTable[name]; return ok }

// CompileTraining compiles the graph of out as a training program whose output is not the
// loss (as the op table does), keeping keep, reading inputs in place.
func CompileTraining(d *Device, out *G.Node, keep []*G.Node, st *autograd.Step, inputs map[*G.Node]*Buffer) (*Program, error) {
	return d.compileWith(out.Graph(), out, keep, st, GradOptions{train: true}, inputs)
}
