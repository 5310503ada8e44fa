//go:build cudaemu || qtcuda

package cuda

import (
	"testing"

	G "gorgonia.org/gorgonia"

	"github.com/qwen-tune/qwen-tune/autograd"
	"github.com/qwen-tune/qwen-tune/autograd/internal/opcases"
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
	setUntilEnd(t, &swigluGradInPlace, on)
	setUntilEnd(t, &keepBF16, on)
}

// OpCase runs the op table's case c (optable.go).
func OpCase(d *Device, c opcases.Case, seed uint64) []Check { return opCase(d, c, seed) }

// OpTableRow reports whether the device's op table has a row for the case named name.
func OpTableRow(name string) bool { _, ok := opTable[name]; return ok }

// CompileTraining compiles the graph of out as a training program whose output is not the
// loss (as the op table does), keeping keep, reading inputs in place.
func CompileTraining(d *Device, out *G.Node, keep []*G.Node, st *autograd.Step, inputs map[*G.Node]*Buffer) (*Program, error) {
	return d.compileWith(out.Graph(), out, keep, st, GradOptions{train: true}, inputs)
}

// SetInputGradIntoAdd switches the fusion "input gradient + add" on or off until the test
// ends.
func SetInputGradIntoAdd(t testing.TB, on bool) {
	setUntilEnd(t, &inputGradIntoAdd, on)
}

// SetAttnScratchInArena switches attention's scratch of loss programs into the arena (on)
// or into one buffer per shape that the program holds (off) until the test ends.
func SetAttnScratchInArena(t testing.TB, on bool) {
	setUntilEnd(t, &attnScratchInArena, on)
}

// SetRoundTrainedAtUse switches the rounding of a ParamSet's float32 values to bf16 where
// the GEMMs read them on (no bf16 copies of those parameters) or off (a bf16 copy of every
// parameter, rewritten by each update) until the test ends.
func SetRoundTrainedAtUse(t testing.TB, on bool) {
	setUntilEnd(t, &roundTrainedAtUse, on)
}

// SetAttnKeepsOperands switches attention's forward keeping its bf16 q, k and v for its
// backward on (the float32 fused qkv projection dies at the forward) or off until the test
// ends.
func SetAttnKeepsOperands(t testing.TB, on bool) {
	setUntilEnd(t, &attnKeepsOperands, on)
}

// SetDropoutAgain switches a LoRA dropout drawn again by A's weight gradient (its buffer
// dying at the A projection) on or off until the test ends.
func SetDropoutAgain(t testing.TB, on bool) {
	setUntilEnd(t, &dropoutAgainOn, on)
}

// setUntilEnd sets a switch of the executor to on until the test ends.
func setUntilEnd(t testing.TB, flag *bool, on bool) {
	was := *flag
	*flag = on
	t.Cleanup(func() { *flag = was })
}
