//go:build qtcuda || cudaemu

package quantize

// GPTQ on the GPU (autograd/cuda/kernels/gptq.cu): the same algorithm as GPTQ, step for step, with
// the Hessian's float32 sums on the device (DeviceHessian), the damped matrix, its Cholesky
// factor and inverse in float64 and the column sweep in float32 there. The sweep's float32
// arithmetic and its lazy update follow the CPU's order of operations, so given the same sums
// the codes differ from the CPU's only where U, rounded to float32 from float64 factors
// computed in another order, differs in its last bit and a code sits on a near-tie. The host
// does what is small: the Hessian's diagonal (dead inputs, act-order, the damping's mean, in
// the CPU's order), and the packing (Pack) of the downloaded codes and grids.

import (
	"context"
	"fmt"
	"math"
	"sort"

	"github.com/qwen-tune/qwen-tune/autograd/cuda"

	"github.com/qwen-tune/qwen-tune/autograd"
	"github.com/qwen-tune/qwen-tune/model"
)

// DeviceHessian is Hessian with its float32 sums on a GPU.
type DeviceHessian struct {
	K, N int
	d    *cuda.Device
	sum  *cuda.Buffer // [K, K]; the upper triangle is read
	x    *cuda.Buffer // upload buffer for host rows
}

// NewDeviceHessian starts an empty Hessian for k input features on d.
func NewDeviceHessian(d *cuda.Device, k int) (*DeviceHessian, error) {
	sum, err := d.Alloc(int64(k)*int64(k)*4, fmt.Sprintf("GPTQ Hessian [%d, %d]", k, k))
	if err != nil {
		return nil, err
	}
	h := &DeviceHessian{K: k, d: d, sum: sum}
	if err := d.Zero(sum); err != nil {
		h.Free()
		return nil, err
	}
	return h, nil
}

// UploadHessian puts a CPU Hessian's sums on d (the same matrix, for comparisons).
func UploadHessian(d *cuda.Device, h *Hessian) (*DeviceHessian, error) {
	sum, err := cuda.Upload(d, h.sum, fmt.Sprintf("GPTQ Hessian [%d, %d]", h.K, h.K))
	if err != nil {
		return nil, err
	}
	return &DeviceHessian{K: h.K, N: h.N, d: d, sum: sum}, nil
}

// Add accumulates one batch of host rows x [rows, K], as Hessian.Add.
func (h *DeviceHessian) Add(x []float32, rows int) error {
	k := h.K
	if err := checkInputs(x, rows, k); err != nil {
		return err
	}
	bytes := int64(len(x)) * 4
	if h.x == nil || h.x.Bytes < bytes {
		h.d.Free(h.x)
		var err error
		if h.x, err = h.d.Alloc(bytes, "GPTQ calibration rows"); err != nil {
			h.x = nil
			return err
		}
	}
	if err := cuda.CopyToDevice(h.d, h.x, x); err != nil {
		return err
	}
	return h.AddDevice(h.x, rows)
}

// AddDevice accumulates one batch of rows x [rows, K] float32 already on the device.
func (h *DeviceHessian) AddDevice(x *cuda.Buffer, rows int) error {
	if err := h.d.HessianAdd(h.sum, x, rows, h.K); err != nil {
		return err
	}
	h.N++
	return nil
}

// Sums downloads the float32 sums sum X^T X [K, K] (the upper triangle is the Hessian's).
func (h *DeviceHessian) Sums() ([]float32, error) {
	out := make([]float32, h.K*h.K)
	return out, cuda.Download(h.d, out, h.sum)
}

// Free releases the device memory.
func (h *DeviceHessian) Free() {
	h.d.Free(h.sum)
	h.d.Free(h.x)
	h.sum, h.x = nil, nil
}

// GPTQDevice is GPTQ on the device of hess: w [n, k] (row-major, rows are outputs).
func GPTQDevice(w []float32, n, k int, hess *DeviceHessian, o Options) (_ *Result, err error) {
	if err := o.Validate(k); err != nil {
		return nil, err
	}
	if o.BlockSize > cuda.GPTQMaxBlock {
		return nil, fmt.Errorf("quantize: the GPU sweeps at most %d columns per block, not %d", cuda.GPTQMaxBlock, o.BlockSize)
	}
	if hess.K != k || hess.N == 0 {
		return nil, fmt.Errorf("quantize: a Hessian of %d features from %d samples for a weight with %d inputs", hess.K, hess.N, k)
	}
	if n <= 0 || len(w) != n*k {
		return nil, fmt.Errorf("quantize: %d weights for [%d, %d]", len(w), n, k)
	}
	for i, v := range w {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return nil, fmt.Errorf("quantize: weight element [%d, %d] is %v", i/k, i%k, v)
		}
	}
	d := hess.d
	var held []*cuda.Buffer
	defer func() {
		for _, b := range held {
			d.Free(b)
		}
	}()
	alloc := func(bytes int64, what string) *cuda.Buffer {
		if err != nil {
			return nil
		}
		var b *cuda.Buffer
		if b, err = d.Alloc(bytes, what); err == nil {
			held = append(held, b)
		}
		return b
	}
	nk, kk := int64(n)*int64(k), int64(k)*int64(k)
	gs := o.GroupSize
	if gs == -1 {
		gs = k
	}
	groups := k / gs
	diagBuf := alloc(int64(k)*8, "GPTQ Hessian diagonal")
	wBuf := alloc(nk*4, "GPTQ weights")
	wf := alloc(nk*4, "GPTQ working weights")
	a := alloc(kk*8, "GPTQ damped Hessian (float64)")
	x := alloc(kk*8, "GPTQ inverse Cholesky factor (float64)")
	u := alloc(kk*4, "GPTQ U (float32)")
	gscale := alloc(int64(groups)*int64(n)*8, "GPTQ scales")
	gzero := alloc(int64(groups)*int64(n)*8, "GPTQ zeros")
	errs := alloc(int64(n)*int64(o.BlockSize)*4, "GPTQ block errors")
	codes := alloc(nk, "GPTQ codes")
	q := alloc(nk*4, "GPTQ dequantized weights")
	gcolBuf := alloc(int64(k)*4, "GPTQ column groups")
	if err != nil {
		return nil, err
	}
	if err := cuda.CopyToDevice(d, wBuf, w); err != nil {
		return nil, err
	}
	scale := 2 / float64(max(hess.N, 1))
	if err := d.GPTQDiag(diagBuf, hess.sum, k, scale); err != nil {
		return nil, err
	}
	diag := make([]float64, k)
	if err := cuda.Download(d, diag, diagBuf); err != nil {
		return nil, err
	}
	hd := make([]float64, k) // the diagonal with dead inputs at 1, as GPTQ's H
	for j, v := range diag {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return nil, fmt.Errorf("quantize: the Hessian's diagonal entry %d is %v: the calibration inputs are not finite or overflow float32", j, v)
		}
		hd[j] = v
		if v == 0 {
			hd[j] = 1
		}
	}
	grids := func(src *cuda.Buffer, g, j0 int) error {
		return d.GPTQGrids(gscale.Slice(int64(g)*int64(n)*8, int64(n)*8), gzero.Slice(int64(g)*int64(n)*8, int64(n)*8), src, n, k, j0, gs, o.Bits, o.Sym)
	}
	switch {
	case o.GroupSize == -1: // one grid per row from the original weights
		if err := grids(wBuf, 0, 0); err != nil {
			return nil, err
		}
	case o.StaticGroups: // from the weights with dead inputs zeroed, before act-order
		if err := d.GPTQWeights(wf, wBuf, nil, diagBuf, n, k); err != nil {
			return nil, err
		}
		for g := 0; g < groups; g++ {
			if err := grids(wf, g, g*gs); err != nil {
				return nil, err
			}
		}
	}
	var perm []int
	var permBuf *cuda.Buffer
	if o.DescAct {
		perm = make([]int, k)
		for j := range perm {
			perm[j] = j
		}
		sort.SliceStable(perm, func(a, b int) bool { return hd[perm[a]] > hd[perm[b]] })
		p32 := make([]int32, k)
		for j, p := range perm {
			p32[j] = int32(p)
		}
		if permBuf = alloc(int64(k)*4, "GPTQ act-order"); err != nil {
			return nil, err
		}
		if err := cuda.CopyToDevice(d, permBuf, p32); err != nil {
			return nil, err
		}
	}
	var mean float64 // in the permuted order, as inverseCholesky sums it
	for j := 0; j < k; j++ {
		if perm != nil {
			mean += hd[perm[j]]
		} else {
			mean += hd[j]
		}
	}
	mean /= float64(k)
	if err := d.GPTQWeights(wf, wBuf, permBuf, diagBuf, n, k); err != nil {
		return nil, err
	}
	damp, ok := o.Damp, false
	for try := 0; try < 4 && !ok; try++ {
		if try > 0 {
			damp *= 10
		}
		if err := d.GPTQDamped(a, hess.sum, permBuf, k, scale, damp*mean); err != nil {
			return nil, err
		}
		if ok, err = d.GPTQInverseCholesky(u, a, x, k); err != nil {
			return nil, err
		}
	}
	if !ok {
		return nil, notPositiveDefinite(damp)
	}
	gcol := make([]int32, k) // each (permuted) column's grid: GPTQ's g_idx before un-permuting
	for j := range gcol {
		gcol[j] = int32(j / gs)
		if o.StaticGroups && perm != nil {
			gcol[j] = int32(perm[j] / gs)
		}
	}
	if err := cuda.CopyToDevice(d, gcolBuf, gcol); err != nil {
		return nil, err
	}
	for i1 := 0; i1 < k; i1 += o.BlockSize {
		count := min(o.BlockSize, k-i1)
		if o.GroupSize != -1 && !o.StaticGroups { // lazy grids from wf as it stands now
			for j := i1 + (gs-i1%gs)%gs; j < i1+count; j += gs {
				if err := grids(wf, j/gs, j); err != nil {
					return nil, err
				}
			}
		}
		if err := d.GPTQBlock(wf, errs, codes, q, u, gscale, gzero, gcolBuf, permBuf, n, k, i1, count, o.Bits); err != nil {
			return nil, err
		}
		if err := d.GPTQUpdate(wf, errs, u, n, k, i1, count); err != nil {
			return nil, err
		}
	}
	res := &Result{N: n, K: k, Codes: make([]uint8, n*k), Q: make([]float64, n*k), Perm: perm, Damp: damp}
	q32 := make([]float32, n*k)
	sc, zr := make([]float64, groups*n), make([]float64, groups*n)
	for _, c := range []error{cuda.Download(d, res.Codes, codes), cuda.Download(d, q32, q), cuda.Download(d, sc, gscale), cuda.Download(d, zr, gzero)} {
		if c != nil {
			return nil, c
		}
	}
	for i, v := range q32 {
		res.Q[i] = float64(v)
	}
	res.Grids = make([][]Grid, groups)
	for g := range res.Grids {
		res.Grids[g] = make([]Grid, n)
		for r := range n {
			res.Grids[g][r] = Grid{Scale: sc[g*n+r], Zero: zr[g*n+r]}
		}
	}
	res.GIdx = gcol
	if perm != nil {
		res.GIdx = make([]int32, k)
		for p, j := range perm {
			res.GIdx[j] = gcol[p]
		}
	}
	return res, nil
}

// CalibrateDevice is Calibrate with the Hessians summed and GPTQ run on the GPU d, and, with
// forward, the calibration forward there too (calibrate_cuda.go: hidden states kept on the
// device, the executor's bf16 GEMMs); without it the forward runs on the CPU in float32 and
// each stage's captured rows are uploaded. d.Peak is the device memory it needed.
func CalibrateDevice(ctx context.Context, d *cuda.Device, m *model.Model, samples [][]int, o Options, method Method, forward bool, progress func(LayerReport, int, int)) ([]*autograd.Int4, []LayerReport, error) {
	if o.BlockSize > cuda.GPTQMaxBlock {
		return nil, nil, fmt.Errorf("quantize: the GPU sweeps at most %d columns per block, not %d", cuda.GPTQMaxBlock, o.BlockSize)
	}
	if !forward {
		return calibrate(ctx, m, samples, o, method, deviceSolver{d}, &cpuForward{}, progress)
	}
	fw := &deviceForward{d: d}
	defer fw.free()
	return calibrate(ctx, m, samples, o, method, deviceSolver{d}, fw, progress)
}

// deviceSolver is a GPU: DeviceHessian and GPTQDevice.
type deviceSolver struct{ d *cuda.Device }

func (s deviceSolver) hessian(k int) (accumulator, error) { return NewDeviceHessian(s.d, k) }
func (s deviceSolver) gptq(w []float32, n, k int, h accumulator, o Options) (*Result, error) {
	return GPTQDevice(w, n, k, h.(*DeviceHessian), o)
}
func (s deviceSolver) release(h accumulator) { h.(*DeviceHessian).Free() }

// errors computes both relative errors on the device: the calibration rows times W, W - Q and
// W - RTN(W) (float32 cuBLAS products), the round-to-nearest values from gptq_grids and
// gptq_rtn_diff; the squares are summed on the host in float64, as RelativeError does.
func (s deviceSolver) errors(w []float32, n, k int, res *Result, x []float32, rows int, o Options) (_, _ float64, err error) {
	if rows == 0 {
		return 0, 0, nil
	}
	d := s.d
	var held []*cuda.Buffer
	defer func() {
		for _, b := range held {
			d.Free(b)
		}
	}()
	keep := func(b *cuda.Buffer, e error) *cuda.Buffer {
		if e != nil && err == nil {
			err = e
		}
		if b != nil {
			held = append(held, b)
		}
		return b
	}
	diff := make([]float32, n*k)
	for i, v := range w {
		diff[i] = v - float32(res.Q[i])
	}
	gs := o.GroupSize
	if gs == -1 {
		gs = k
	}
	xb := keep(cuda.Upload(d, x[:rows*k], "calibration rows"))
	wb := keep(cuda.Upload(d, w, "weights"))
	db := keep(cuda.Upload(d, diff, "weights minus their quantization"))
	yw := keep(d.Alloc(int64(rows)*int64(n)*4, "X W^T"))
	yd := keep(d.Alloc(int64(rows)*int64(n)*4, "X (W - Q)^T"))
	sc := keep(d.Alloc(int64(k/gs)*int64(n)*8, "round-to-nearest scales"))
	zr := keep(d.Alloc(int64(k/gs)*int64(n)*8, "round-to-nearest zeros"))
	if err != nil {
		return 0, 0, err
	}
	xw, xd := make([]float32, rows*n), make([]float32, rows*n)
	rel := func() (float64, error) {
		if err := d.GemmF32(yd, xb, db, rows, n, k); err != nil {
			return 0, err
		}
		if err := cuda.Download(d, xd, yd); err != nil {
			return 0, err
		}
		var num, den float64
		for i := range xw {
			num += float64(xd[i]) * float64(xd[i])
			den += float64(xw[i]) * float64(xw[i])
		}
		if den == 0 {
			return 0, nil
		}
		return math.Sqrt(num / den), nil
	}
	if err := d.GemmF32(yw, xb, wb, rows, n, k); err != nil {
		return 0, 0, err
	}
	if err := cuda.Download(d, xw, yw); err != nil {
		return 0, 0, err
	}
	gptq, err := rel()
	if err != nil {
		return 0, 0, err
	}
	for g := 0; g < k/gs; g++ {
		if err := d.GPTQGrids(sc.Slice(int64(g)*int64(n)*8, int64(n)*8), zr.Slice(int64(g)*int64(n)*8, int64(n)*8), wb, n, k, g*gs, gs, o.Bits, o.Sym); err != nil {
			return 0, 0, err
		}
	}
	if err := d.GPTQRTNDiff(db, wb, sc, zr, n, k, gs, o.Bits); err != nil {
		return 0, 0, err
	}
	rtn, err := rel()
	return gptq, rtn, err
}
