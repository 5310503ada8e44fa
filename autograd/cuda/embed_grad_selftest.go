//go:build qtcuda || cudaemu

package cuda

import (
	"fmt"
	"math/rand/v2"

	"github.com/qwen-tune/qwen-tune/autograd"
)

// embedGradChecks: the trainable rows' gather, a table's gradient (Qwen-7B's 208 special
// tokens and its whole vocabulary, and odd small sizes) and the special-token columns added
// into the logits, against gatherRows, scatterRows and PlaceColumns's CPU op; all three are
// exact (copies, and float32 sums in the CPU's order).
func embedGradChecks(d *Device, r *rand.Rand) []Check {
	var checks []Check
	// idx: n row indices into rows, a third of them -1 (no row), repeats, the last row unused
	idx := func(n, rows int) []int32 {
		v := make([]int32, n)
		for i := range v {
			v[i] = -1
			if i%3 != 0 {
				v[i] = int32(r.IntN(rows - 1))
			}
		}
		return v
	}
	for _, c := range []struct{ n, rows, h int }{{40, 208, 4096}, {7, 3, 100}} {
		w, ix := randBF16(r, c.rows*c.h, 1), idx(c.n, c.rows)
		want := make([]float32, c.n*c.h)
		if err := autograd.Ref.Gather(denseOf(w, c.rows, c.h), ix, c.h, want); err != nil {
			panic(err)
		}
		g := &gpuCase{d: d}
		wb, sb, yb := g.up(w, "w"), g.out(c.n, "row indices"), g.out(c.n*c.h, "y")
		checks = append(checks, g.result("gather_rows_bf16", fmt.Sprintf("%d rows of %d from a table of %d", c.n, c.h, c.rows), 0, func() error {
			return d.GatherRowsBF16(yb, wb, sb, ix, c.rows, c.h)
		}, yb, want))
	}
	for _, c := range []struct{ n, rows, h int }{{40, 208, 4096}, {300, 151936, 64}, {7, 3, 100}} {
		dy, ix := autograd.Ref.Normal(r, c.n*c.h), idx(c.n, c.rows)
		want := make([]float32, c.rows*c.h)
		autograd.Ref.Scatter(dy, ix, c.h, want)
		g := &gpuCase{d: d}
		yb, sb, ob := g.up(dy, "dy"), g.poisoned(ScatterRowsScratch(c.n), "row segments"), g.out(c.rows*c.h, "dw")
		// float32 sums in position order from 0, as scatterRows
		checks = append(checks, g.result("segment_sum_rows", fmt.Sprintf("[%d, %d] from %d positions", c.rows, c.h, c.n), 0, func() error {
			return d.ScatterRows(ob, yb, sb, ix, c.rows, c.h)
		}, ob, want))
	}
	for _, c := range []struct{ n, s, width, off int }{{40, 208, 151936, 151643}, {3, 5, 17, 12}} {
		x, y := autograd.Ref.Normal(r, c.n*c.s), autograd.Ref.Normal(r, c.n*c.width)
		wide, err := autograd.Ref.PlaceColumns(denseOf(x, c.n, c.s), c.off, c.width)
		if err != nil {
			panic(err)
		}
		want := make([]float32, len(y))
		for i, v := range wide.Data().([]float32) {
			want[i] = y[i] + v
		}
		g := &gpuCase{d: d}
		xb, yb := g.up(x, "x"), g.up(y, "y")
		// one float32 add an element, in place
		checks = append(checks, g.result("add_columns", fmt.Sprintf("[%d, %d] at column %d of %d", c.n, c.s, c.off, c.width), 0, func() error {
			return d.AddColumns(yb, xb, c.n, c.s, c.width, c.off)
		}, yb, want))
	}
	return checks
}
