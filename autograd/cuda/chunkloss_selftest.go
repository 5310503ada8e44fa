//go:build qtcuda || cudaemu

package cuda

import (
	"fmt"
	"math/rand/v2"

	"github.com/qwen-tune/qwen-tune/autograd"
)

// chunkLossChecks: cross_entropy_chunk on one chunk of rows (crossing a sequence's end, with
// ignored labels, in a batch without any target) against the CPU's loss, log-sum-exps and
// gradient rounded to bf16.
func chunkLossChecks(d *Device, r *rand.Rand) []Check {
	var checks []Check
	for _, c := range []struct {
		b, t, vocab, row0, rc int
		ignored, dloss        float64
	}{{2, 5, 151936, 3, 4, 0.3, 1}, {3, 7, 1000, 0, 21, 0.3, 0.7}, {1, 4, 100, 1, 2, 1, 1}} {
		n := c.b * c.t
		ce := newCECase(r, c.b, c.t, c.vocab, c.ignored, c.dloss)
		logits, labels, targets, scale := ce.logits, ce.labels, ce.targets, ce.scale
		wantLoss, wantLSE := ce.loss[c.row0:c.row0+c.rc], ce.lse[c.row0:c.row0+c.rc]
		wantGrad := ce.grad[c.row0*c.vocab : (c.row0+c.rc)*c.vocab]
		for i, v := range wantGrad {
			wantGrad[i] = autograd.Ref.BF16(bf16Round(v))
		}
		g := &gpuCase{d: d}
		chunk := logits[c.row0*c.vocab : (c.row0+c.rc)*c.vocab]
		xb, lb := g.up(chunk, "chunk logits"), g.up(labels, "labels")
		lossb, lseb, dxb := g.out(n, "loss"), g.out(n, "lse"), g.outBF16(c.rc*c.vocab, "dlogits")
		// float32 sums of expf against the CPU's float64 sums of its float32 exponentials:
		// measured 7.8e-8 (loss) and 3.3e-8 (lse), as cross_entropy_rows; the gradient in bf16
		// 1.1e-6, the few values whose float32 lies next to a bf16 rounding boundary rounding
		// apart (2^-8 each); the device's expf (2 ulp) may move some 20 more of 600,000 across,
		// about 2e-5, hence the room
		checks = append(checks, g.results("cross_entropy_chunk", fmt.Sprintf("rows %d..%d of %d x %d positions, vocabulary %d, %d targets", c.row0, c.row0+c.rc, c.b, c.t, c.vocab, targets), func() error {
			return d.CrossEntropyChunk(lossb, lseb, dxb, xb, lb, c.row0, c.rc, n, c.t, c.vocab, scale)
		}, output{what: "loss", buf: lossb, want: wantLoss, tol: 1e-6, cols: c.rc, stride: n, off: c.row0},
			output{what: "lse", buf: lseb, want: wantLSE, tol: 1e-6, cols: c.rc, stride: n, off: c.row0},
			output{what: "bf16 dlogits", buf: dxb, want: wantGrad, tol: 1e-4, bf16: true})...)
	}
	return checks
}
