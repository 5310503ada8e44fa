//go:build qtcuda || cudaemu

package cuda

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"

	"gorgonia.org/tensor"

	"github.com/qwen-tune/qwen-tune/autograd"
	"github.com/qwen-tune/qwen-tune/optim"
)

// paramSetChecks: a ParamSet's step (two micro-batches' gradients pooled token-weighted,
// divided by the tokens, clipped, AdamW, the bf16 weights rewritten) against lora's host
// step (the same sums in float32, optim.ClipGradNorm, optim.AdamW.Update) from the same
// state mid-run, clipping and not; and GoBack, which must give the state before the update
// bit for bit. The gradients here are a program's own buffers, pooled by grad_accumulate
// (bitwise the host's); those a GEMM writes into the sums directly are checked apart
// (gemmIntoSumsCheck), within a few ulps.
func paramSetChecks(d *Device, r *rand.Rand) []Check {
	var checks []Check
	sizes := []int{4096*8 + 3, 1000, 77}
	tokens := []int{7, 5}
	for _, clip := range []float64{2, 0.5} { // maxNorm as a multiple of the norm
		shape := fmt.Sprintf("%v, micro-batches of %v tokens, max norm %.1f x the norm", sizes, tokens, clip)
		fail := func(err error) []Check { return append(checks, Check{Op: "ParamSet step", Shape: shape, Err: err}) }
		values, m, v := make([][]float32, len(sizes)), make([][]float32, len(sizes)), make([][]float32, len(sizes))
		grads := make([][][]float32, len(tokens))
		for i, n := range sizes {
			values[i], m[i], v[i] = autograd.Ref.Normal(r, n), autograd.Ref.Normal(r, n), autograd.Ref.Normal(r, n)
			for j := range n {
				values[i][j] *= 0.02
				m[i][j] *= 1e-3
				v[i][j] = 1e-6 * v[i][j] * v[i][j]
			}
		}
		for k := range tokens {
			for _, n := range sizes {
				grads[k] = append(grads[k], autograd.Ref.Normal(r, n))
			}
		}
		// the host's step, as lora's trainer takes it
		hostOpt := &optim.AdamW{Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1, Step: 4, M: clone2(m), V: clone2(v)}
		want, sum := clone2(values), make([][]float32, len(sizes))
		total := 0
		for i, n := range sizes {
			sum[i] = make([]float32, n)
		}
		for k, w := range tokens {
			for i := range sum {
				for j, g := range grads[k][i] {
					sum[i][j] += float32(g * float32(w))
				}
			}
			total += w
		}
		var ss float64
		for i := range sum {
			for j := range sum[i] {
				sum[i][j] /= float32(total)
				ss += float64(sum[i][j]) * float64(sum[i][j])
			}
		}
		maxNorm := clip * math.Sqrt(ss)
		wantNorm := optim.ClipGradNorm(sum, maxNorm)
		const lr = 3e-4
		if err := hostOpt.Update(want, sum, lr); err != nil {
			panic(err)
		}

		dense := make([]*tensor.Dense, len(sizes))
		names := make([]string, len(sizes))
		for i := range sizes {
			dense[i], names[i] = denseOf(slices.Clone(values[i]), sizes[i]), fmt.Sprintf("parameter %d", i)
		}
		s, err := d.NewParamSet(names, dense)
		if err != nil {
			return fail(err)
		}
		for i := range s.keys { // the bf16 copies of parameters a program reads other than by GEMMs
			if err := s.copyFor(i); err != nil {
				return fail(err)
			}
		}
		got, gotM, gotV, err := paramSetStep(d, s, values, m, v, grads, tokens, maxNorm, lr)
		if err != nil {
			return fail(err)
		}
		for _, o := range []struct {
			what      string
			got, want [][]float32
		}{{"values", got.values, want}, {"first moments", gotM, hostOpt.M}, {"second moments", gotV, hostOpt.V}, {"bf16 weights", got.bf16, bf16Rounded(want)}} {
			// measured 0 (the same float32 and double operations, none fused); clipped also 0
			// here, but the factor comes from a norm summed in another order, which may differ
			// from the host's in its last bits, a clipped gradient then by one float32 ulp (6e-8)
			tol := 0.0
			if clip < 1 {
				tol = 1e-7
			}
			rel, unwritten := compare(slices.Concat(o.got...), slices.Concat(o.want...))
			checks = append(checks, Check{Op: "ParamSet step (" + o.what + ")", Shape: shape, RelErr: rel, Tol: tol, Unwritten: unwritten})
		}
		// float64 sums in another order than the host's: measured 2.4e-14 (sum_squares)
		checks = append(checks, Check{Op: "ParamSet step (gradient norm)", Shape: shape, RelErr: math.Abs(got.norm-wantNorm) / wantNorm, Tol: 3e-13})
		back, err := paramSetBack(d, s, hostOpt)
		if err == nil && hostOpt.Step != 4 {
			err = fmt.Errorf("the optimizer's step is %d after going back, not 4", hostOpt.Step)
		}
		for _, o := range []struct {
			what      string
			got, want [][]float32
		}{{"values", back.values, values}, {"first moments", back.m, m}, {"second moments", back.v, v}, {"bf16 weights", back.bf16, bf16Rounded(values)}} {
			rel, unwritten := compare(slices.Concat(o.got...), slices.Concat(o.want...))
			checks = append(checks, Check{Op: "ParamSet GoBack (" + o.what + ")", Shape: shape, RelErr: rel, Unwritten: unwritten, Err: err})
		}
		if err := s.Close(); err != nil {
			checks = append(checks, Check{Op: "ParamSet Close", Shape: shape, Err: err})
		}
		for _, key := range s.keys { // the test's tensors die here: so do their weights
			d.Free(d.weights[key])
			delete(d.weights, key)
		}
	}
	return append(checks, gemmIntoSumsCheck(d, r))
}

// gemmIntoSumsCheck: the weight-gradient GEMM of a program compiled into a ParamSet writes
// the step's sums itself, sum = alpha dy^T x + beta sum with alpha the micro-batch's tokens
// times the LoRA scale and beta 0 then 1, against the host pooling the same GEMM's own
// output (alpha 1, beta 0) as lora's trainer does: g * scale, then sum += g * tokens, each
// rounded to float32. The GEMM rounds once where the host rounds up to three times, so the
// step is no longer the host's bit for bit on the same GEMM inputs: a few float32 ulps.
func gemmIntoSumsCheck(d *Device, r *rand.Rand) Check {
	const rows, m, k, scale = 300, 64, 4096, 0.25
	tokens := []int{7, 5}
	shape := fmt.Sprintf("dW [%d, %d] over %d rows, scale %g, micro-batches of %v tokens", m, k, rows, scale, tokens)
	c := Check{Op: "ParamSet sums from the weight-gradient GEMM", Shape: shape}
	want := make([]float32, m*k)
	sums, err := d.Alloc(int64(m*k)*4, "gradient sums")
	if err != nil {
		c.Err = err
		return c
	}
	defer d.Free(sums)
	g, err := d.Alloc(int64(m*k)*4, "gradient")
	if err != nil {
		c.Err = err
		return c
	}
	defer d.Free(g)
	host := make([]float32, m*k)
	for i, w := range tokens {
		dy, err := Upload(d, randBF16(r, rows*m, 1), "dy")
		if err == nil {
			defer d.Free(dy)
		}
		x, xerr := Upload(d, randBF16(r, rows*k, 1), "x")
		if xerr == nil {
			defer d.Free(x)
		}
		if err = errors.Join(err, xerr); err == nil {
			// row-major dW = dy^T x is column-major dW^T [K, M] = x^T [K, N] (dy^T)^T [N, M]
			err = d.gemmScaled(blasOpN, blasOpT, k, m, rows, 1, x, dtypeBF16, k, 0, dy, dtypeBF16, m, 0, 0, g, dtypeF32, k, 0, 1)
		}
		if err == nil {
			err = Download(d, host, g)
		}
		beta := float32(1)
		if i == 0 {
			beta = 0
		}
		if err == nil {
			err = d.gemmScaled(blasOpN, blasOpT, k, m, rows, float32(scale*float64(w)), x, dtypeBF16, k, 0, dy, dtypeBF16, m, 0, beta, sums, dtypeF32, k, 0, 1)
		}
		if err != nil {
			c.Err = err
			return c
		}
		for j, v := range host {
			want[j] += float32(float64(v)*scale) * float32(w)
		}
	}
	got := make([]float32, m*k)
	if c.Err = Download(d, got, sums); c.Err != nil {
		return c
	}
	// measured 2.4e-7 on the emulator (a few float32 ulps); 1e-5 because a GPU's cuBLAS may
	// pick another kernel, another summation order, for alpha and beta other than 1 and 0
	c.RelErr, c.Unwritten = compare(got, want)
	c.Tol = 1e-5
	return c
}

// paramState is a ParamSet's state as the host reads it back.
type paramState struct {
	values, m, v, bf16 [][]float32
	norm               float64
}

// download reads s's values, moments and bf16 weights.
func (st *paramState) download(d *Device, s *ParamSet) error {
	for _, x := range []*[][]float32{&st.values, &st.m, &st.v, &st.bf16} {
		*x = make([][]float32, len(s.sizes))
		for i, n := range s.sizes {
			(*x)[i] = make([]float32, n)
		}
	}
	if err := s.Download(st.values, st.m, st.v); err != nil {
		return err
	}
	for i, b := range s.bf16 {
		if b == nil { // no copy: the GEMMs round the values where they read them
			st.bf16[i] = nil
			continue
		}
		bits := make([]uint16, s.sizes[i])
		if err := Download(d, bits, b); err != nil {
			return err
		}
		st.bf16[i] = autograd.Ref.Widen(bits)
	}
	return nil
}

// paramSetStep uploads the state, accumulates the micro-batches' gradients through programs
// that kept them, clips and updates; it returns the state after the update and its moments.
func paramSetStep(d *Device, s *ParamSet, values, m, v [][]float32, grads [][][]float32, tokens []int, maxNorm, lr float64) (st paramState, gotM, gotV [][]float32, err error) {
	if err = s.Upload(values, m, v); err != nil {
		return st, nil, nil, err
	}
	total := 0
	for k, w := range tokens {
		p := &Program{d: d, of: s.keys}
		for _, g := range grads[k] {
			b, err := Upload(d, g, "gradient")
			if err != nil {
				return st, nil, nil, err
			}
			defer d.Free(b)
			p.keep = append(p.keep, value{buf: b, rows: 1, cols: len(g), stride: len(g)})
		}
		if err = s.Accumulate(p, w, k == 0); err != nil {
			return st, nil, nil, err
		}
		if err = p.accumulate(); err != nil { // the end of the program's run: it has no launches
			return st, nil, nil, err
		}
		total += w
	}
	if st.norm, err = s.Clip(total, maxNorm); err != nil {
		return st, nil, nil, err
	}
	o := &optim.AdamW{Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1, Step: 4}
	if err = s.Update(o, lr); err != nil {
		return st, nil, nil, err
	}
	if o.Step != 5 {
		return st, nil, nil, fmt.Errorf("the optimizer's step is %d after an update from 4", o.Step)
	}
	err = st.download(d, s)
	return st, st.m, st.v, err
}

// paramSetBack goes back from the update paramSetStep made; o (at step 5) gets step 4 back.
func paramSetBack(d *Device, s *ParamSet, o *optim.AdamW) (st paramState, err error) {
	if err = s.GoBack(o); err != nil {
		return st, err
	}
	err = st.download(d, s)
	return st, err
}

func clone2(x [][]float32) [][]float32 {
	out := make([][]float32, len(x))
	for i := range x {
		out[i] = slices.Clone(x[i])
	}
	return out
}

// bf16Rounded is x rounded to bf16 and widened back.
func bf16Rounded(x [][]float32) [][]float32 {
	out := make([][]float32, len(x))
	for i := range x {
		out[i] = make([]float32, len(x[i]))
		for j, f := range x[i] {
			out[i][j] = autograd.Ref.BF16(bf16Round(f))
		}
	}
	return out
}
