//go:build qtcuda || cudaemu

package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/qwen-tune/qwen-tune/autograd"
)

// gptqChecks are the GPTQ solve's kernels (kernels/gptq.cu) against plain CPU twins: the
// Hessian's sums, the damped matrix and its inverse Cholesky factor (float64, rounded to
// float32), and one lazy block of the column sweep (grids, codes, dequantized values, scaled
// errors and the update of the later columns) in the CPU's float32 order of operations.
func gptqChecks(d *Device, r *rand.Rand) []Check {
	var checks []Check
	// Sums of rows products in float32 (cuBLAS) against float64: measured 1.1e-7 to 1.5e-7 on
	// the emulator; tolerance 2e-6.
	for _, s := range []struct{ rows, k int }{{64, 1024}, {37, 100}} {
		x := autograd.Ref.Normal(r, s.rows*s.k)
		want := make([]float32, s.k*s.k)
		for i := 0; i < s.k; i++ {
			for j := 0; j < s.k; j++ {
				var v float64
				for t := 0; t < s.rows; t++ {
					v += float64(x[t*s.k+i]) * float64(x[t*s.k+j])
				}
				want[i*s.k+j] = float32(v)
			}
		}
		g := &gpuCase{d: d}
		xb := g.up(x, "x")
		sum := g.up(make([]float32, s.k*s.k), "sum")
		checks = append(checks, g.result("HessianAdd (cuBLAS)", fmt.Sprintf("[%d, %d]", s.rows, s.k), 2e-6, func() error { return d.HessianAdd(sum, xb, s.rows, s.k) }, sum, want))
	}
	checks = append(checks, gptqInverseChecks(d, r)...)
	return append(checks, gptqSweepChecks(d, r)...)
}

// spdSums are float32 sums of x^T x for rows random rows of k correlated features (a
// Hessian's sums), the upper triangle filled.
func spdSums(r *rand.Rand, rows, k int) []float32 {
	x := autograd.Ref.Normal(r, rows*k)
	for t := 0; t < rows; t++ {
		c := x[t*k]
		for j := 1; j < k; j++ {
			x[t*k+j] += 0.5 * c
		}
	}
	s := make([]float32, k*k)
	for i := 0; i < k; i++ {
		for j := i; j < k; j++ {
			var v float32
			for t := 0; t < rows; t++ {
				v += x[t*k+i] * x[t*k+j]
			}
			s[i*k+j] = v
		}
	}
	return s
}

// cpuUpperInverse is U, the upper Cholesky factor of (J a J)^-1 = J L^-T L^-1 J for a = L L^T
// (row-major [k, k] float64, lower triangle read), rounded to float32; ok is false when a is
// not positive definite.
func cpuUpperInverse(a []float64, k int) (u []float32, ok bool) {
	l := make([]float64, k*k)
	for j := 0; j < k; j++ {
		v := a[j*k+j]
		for t := 0; t < j; t++ {
			v -= l[j*k+t] * l[j*k+t]
		}
		if !(v > 0) {
			return nil, false
		}
		l[j*k+j] = math.Sqrt(v)
		for i := j + 1; i < k; i++ {
			w := a[i*k+j]
			for t := 0; t < j; t++ {
				w -= l[i*k+t] * l[j*k+t]
			}
			l[i*k+j] = w / l[j*k+j]
		}
	}
	x := make([]float64, k*k) // L^-1, column by column
	for c := 0; c < k; c++ {
		for i := c; i < k; i++ {
			v := 0.0
			if i == c {
				v = 1
			}
			for t := c; t < i; t++ {
				v -= l[i*k+t] * x[t*k+c]
			}
			x[i*k+c] = v / l[i*k+i]
		}
	}
	u = make([]float32, k*k)
	for i := 0; i < k; i++ {
		for j := i; j < k; j++ {
			u[i*k+j] = float32(x[(k-1-i)*k+(k-1-j)])
		}
	}
	return u, true
}

// gptqInverseChecks: gptq_damped, then the blocked Cholesky factorization and inverse, against
// cpuUpperInverse; and a matrix that is not positive definite reported as such.
func gptqInverseChecks(d *Device, r *rand.Rand) []Check {
	var checks []Check
	// measured on the emulator: 0 (the float64 factors, computed in another order than the
	// twin's, round to the same float32 values); a GPU's fused multiply-adds may move a few by
	// one float32 ulp (6e-8 relative); tolerance 1e-6
	for _, k := range []int{520, 100} {
		sums := spdSums(r, 2*k, k)
		perm := r.Perm(k)
		p32 := make([]int32, k)
		for i, p := range perm {
			p32[i] = int32(p)
		}
		scale, add := 2/3.0, 0.01*float64(k)
		a := make([]float64, k*k) // J P^T H P J + add I
		for i := 0; i < k; i++ {
			for j := 0; j < k; j++ {
				p, q := perm[k-1-i], perm[k-1-j]
				v := scale * float64(sums[min(p, q)*k+max(p, q)])
				if i == j {
					v += add
				}
				a[i*k+j] = v
			}
		}
		want, ok := cpuUpperInverse(a, k)
		shape := fmt.Sprintf("[%d, %d], act-order", k, k)
		if !ok {
			checks = append(checks, Check{Op: "gptq inverse Cholesky", Shape: shape, Err: fmt.Errorf("the test matrix is not positive definite")})
			continue
		}
		g := &gpuCase{d: d}
		sb, pb := g.up(sums, "sums"), g.up(p32, "perm")
		ab, xb := g.poisoned(int64(k*k)*8, "a"), g.poisoned(int64(k*k)*8, "x")
		ub := g.out(k*k, "u")
		checks = append(checks, g.result("gptq_damped + inverse Cholesky", shape, 1e-6, func() error {
			if err := d.GPTQDamped(ab, sb, pb, k, scale, add); err != nil {
				return err
			}
			ok, err := d.GPTQInverseCholesky(ub, ab, xb, k)
			if err == nil && !ok {
				err = fmt.Errorf("a positive definite matrix was reported not positive definite")
			}
			return err
		}, ub, want))
	}
	{ // [[1, 2], [2, 1]] and the identity beyond: not positive definite
		const k = 70
		sums := make([]float32, k*k)
		for j := 0; j < k; j++ {
			sums[j*k+j] = 1
		}
		sums[1] = 2
		g := &gpuCase{d: d}
		sb := g.up(sums, "sums")
		ab, xb, ub := g.poisoned(k*k*8, "a"), g.poisoned(k*k*8, "x"), g.out(k*k, "u")
		var ok bool
		c := g.result("gptq inverse Cholesky (not positive definite)", fmt.Sprintf("[%d, %d]", k, k), 0, func() error {
			if err := d.GPTQDamped(ab, sb, nil, k, 1, 0); err != nil {
				return err
			}
			var err error
			ok, err = d.GPTQInverseCholesky(ub, ab, xb, k)
			return err
		}, ub, nil)
		if c.Err == nil && ok {
			c.Err = fmt.Errorf("an indefinite matrix was factored")
		}
		checks = append(checks, c)
	}
	return checks
}

// cpuGrid is quantize's findGrid.
func cpuGrid(row []float32, bits int, sym bool) (scale, zero float64) {
	maxq := float64(int(1)<<bits - 1)
	xmin, xmax := 0.0, 0.0
	for _, v := range row {
		xmin, xmax = min(xmin, float64(v)), max(xmax, float64(v))
	}
	if sym {
		xmax = max(math.Abs(xmin), xmax)
		if xmin < 0 {
			xmin = -xmax
		}
	}
	if xmin == 0 && xmax == 0 {
		xmin, xmax = -1, 1
	}
	scale = (xmax - xmin) / maxq
	zero = (maxq + 1) / 2
	if !sym {
		zero = math.RoundToEven(-xmin / scale)
	}
	return scale, zero
}

// gptqSweepChecks: one lazy block of the sweep (columns i1..i1+count of a layer whose first
// block is done), grids of its two groups, in act-order, against the CPU's float32 loop:
// codes, dequantized values, errors and the updated later columns, all exact.
func gptqSweepChecks(d *Device, r *rand.Rand) []Check {
	const n, k, i1, count, gs, bits = 70, 320, 64, 128, 64, 4
	sym := true
	wf := autograd.Ref.Normal(r, n*k)
	sums := spdSums(r, 2*k, k)
	a := make([]float64, k*k)
	for i := 0; i < k; i++ {
		for j := 0; j < k; j++ {
			p, q := k-1-i, k-1-j
			a[i*k+j] = float64(sums[min(p, q)*k+max(p, q)])
			if i == j {
				a[i*k+j] += 1
			}
		}
	}
	u, ok := cpuUpperInverse(a, k)
	if !ok {
		return []Check{{Op: "gptq_block", Err: fmt.Errorf("the test matrix is not positive definite")}}
	}
	perm := r.Perm(k)
	p32, gcol := make([]int32, k), make([]int32, k)
	for j, p := range perm {
		p32[j], gcol[j] = int32(p), int32(j/gs)
	}
	groups := k / gs
	scale, zero := make([]float64, groups*n), make([]float64, groups*n)
	for g := i1 / gs; g < (i1+count)/gs; g++ {
		for row := 0; row < n; row++ {
			scale[g*n+row], zero[g*n+row] = cpuGrid(wf[row*k+g*gs:row*k+(g+1)*gs], bits, sym)
		}
	}
	maxq := float64(int(1)<<bits - 1)
	codes, q := make([]float32, n*k), make([]float32, n*k)
	errs := make([]float32, n*count)
	after := append([]float32(nil), wf...)
	for row := 0; row < n; row++ {
		w1 := append([]float32(nil), wf[row*k+i1:row*k+i1+count]...)
		for i := 0; i < count; i++ {
			j := i1 + i
			g := int(gcol[j])*n + row
			s, z := scale[g], zero[g]
			c := min(max(math.RoundToEven(float64(w1[i])/s)+z, 0), maxq)
			qv := float32(s) * float32(c-z)
			codes[row*k+perm[j]], q[row*k+perm[j]] = float32(c), qv
			e := (w1[i] - qv) / u[j*k+j]
			errs[row*count+i] = e
			for c2 := i; c2 < count; c2++ {
				w1[c2] -= float32(e * u[j*k+i1+c2])
			}
		}
		for c := i1 + count; c < k; c++ {
			v := after[row*k+c]
			for l := 0; l < count; l++ {
				if e := errs[row*count+l]; e != 0 {
					v += float32(-e * u[(i1+l)*k+c])
				}
			}
			after[row*k+c] = v
		}
	}
	// only the columns this block writes are compared; the rest of codes and q stay poisoned
	var gotCols []int
	for row := 0; row < n; row++ {
		for j := i1; j < i1+count; j++ {
			gotCols = append(gotCols, row*k+perm[j])
		}
	}
	g := &gpuCase{d: d}
	wb, ub, pb, gb := g.up(wf, "wf"), g.up(u, "u"), g.up(p32, "perm"), g.up(gcol, "gcol")
	sb, zb := g.poisoned(int64(groups*n)*8, "scale"), g.poisoned(int64(groups*n)*8, "zero")
	eb, qb := g.out(n*count, "errors"), g.out(n*k, "q")
	cb := g.poisoned(int64(n*k), "codes")
	shape := fmt.Sprintf("[%d, %d], columns %d..%d, groups of %d, act-order, %d bits", n, k, i1, i1+count, gs, bits)
	var gotCodes []byte
	var gotQ []float32
	checks := g.results("gptq_grids + gptq_block + gptq_update", shape, func() error {
		for gi := i1 / gs; gi < (i1+count)/gs; gi++ {
			if err := d.GPTQGrids(sb.Slice(int64(gi*n)*8, n*8), zb.Slice(int64(gi*n)*8, n*8), wb, n, k, gi*gs, gs, bits, sym); err != nil {
				return err
			}
		}
		if err := d.GPTQBlock(wb, eb, cb, qb, ub, sb, zb, gb, pb, n, k, i1, count, bits); err != nil {
			return err
		}
		if err := d.GPTQUpdate(wb, eb, ub, n, k, i1, count); err != nil {
			return err
		}
		if err := d.Sync(); err != nil {
			return err
		}
		gotCodes, gotQ = make([]byte, n*k), make([]float32, n*k)
		if err := Download(d, gotCodes, cb); err != nil {
			return err
		}
		return Download(d, gotQ, qb)
	}, output{what: "errors", buf: eb, want: errs}, output{what: "later columns", buf: wb, want: after})
	for _, what := range []string{"codes", "dequantized"} {
		c := Check{Op: "gptq_block (" + what + ")", Shape: shape, Err: checks[0].Err}
		if c.Err == nil && gotCodes != nil {
			got, want := make([]float32, len(gotCols)), make([]float32, len(gotCols))
			for i, at := range gotCols {
				if what == "codes" {
					got[i], want[i] = float32(gotCodes[at]), codes[at]
					if gotCodes[at] > byte(maxq) {
						got[i] = float32(math.NaN())
					}
				} else {
					got[i], want[i] = gotQ[at], q[at]
				}
			}
			c.RelErr, c.Unwritten = compare(got, want)
		}
		checks = append(checks, c)
	}
	return checks
}
