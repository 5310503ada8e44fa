package quantize

// GPTQ (Frantar et al. 2022) as AutoGPTQ implements it (auto_gptq/quantization/gptq.py):
//
//  1. H = 2/n sum_b X_b^T X_b over calibration batches (n counts batches, as add_batch does).
//  2. Dead inputs (H[j,j] = 0) get H[j,j] = 1 and their weight column is zeroed.
//  3. With act-order, columns are processed in decreasing order of H[j,j].
//  4. Damping: H += damp * mean(diag H) * I; then Hinv = U, the upper Cholesky factor of H^-1.
//  5. Columns are quantized one at a time in blocks of 128. The rounding error of column j,
//     divided by U[j,j], is fed back into the remaining columns of the block through row j of
//     U, and into later blocks once the block is done (lazy batch updates).
//  6. A group's scale and zero are computed when its first column is reached, from the
//     working weights as they stood at the start of the current block ("lazy" scales).
//
// Precision: H is summed in float32 (as AutoGPTQ keeps it); damping, the inverse and its
// Cholesky factor are computed in float64, where AutoGPTQ uses float32; the sweep (working
// weights, U, the error feedback and the dequantized values) runs in float32 as AutoGPTQ's
// does, and each group's grid is found in float64 from the float32 working weights. Rounding
// and summation order still differ from PyTorch's, so a near-tie can round the other way (a
// few codes in a few rows), which the tests allow as the reference data documents.

import (
	"fmt"
	"math"
	"sort"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"
	"gonum.org/v1/gonum/mat"
)

// Options are the quantization settings (AutoGPTQ's quantize_config.json).
type Options struct {
	Bits         int     // 2, 3, 4 or 8
	GroupSize    int     // columns per group; -1 = one group per row
	Sym          bool    // symmetric grid with the zero at the middle code
	DescAct      bool    // act-order: columns by decreasing Hessian diagonal
	StaticGroups bool    // group grids from the original weights, before any update
	Damp         float64 // damp_percent: fraction of the mean Hessian diagonal added to it
	BlockSize    int     // columns per lazy update block (128)
}

// DefaultOptions are Qwen-7B-Chat-Int4's settings.
func DefaultOptions() Options {
	return Options{Bits: 4, GroupSize: 128, Sym: true, Damp: 0.01, BlockSize: 128}
}

// Validate checks the settings against a weight with k input columns.
func (o Options) Validate(k int) error {
	switch {
	case o.Bits != 2 && o.Bits != 3 && o.Bits != 4 && o.Bits != 8:
		return fmt.Errorf("quantize: bits must be 2, 3, 4 or 8, got %d", o.Bits)
	case o.GroupSize != -1 && o.GroupSize <= 0:
		return fmt.Errorf("quantize: group size must be positive or -1, got %d", o.GroupSize)
	case o.GroupSize > 0 && k%o.GroupSize != 0:
		return fmt.Errorf("quantize: %d input columns are not a multiple of the group size %d", k, o.GroupSize)
	case !(o.Damp > 0 && o.Damp < 1):
		return fmt.Errorf("quantize: damping must be in (0, 1), got %g", o.Damp)
	case o.BlockSize <= 0:
		return fmt.Errorf("quantize: block size must be positive")
	case o.StaticGroups && o.GroupSize == -1:
		return fmt.Errorf("quantize: static groups need a group size")
	}
	return nil
}

// Hessian accumulates H = 2/n sum X^T X over calibration batches, as AutoGPTQ's add_batch
// (n counts batches). The sum is kept in float32, as AutoGPTQ keeps H.
type Hessian struct {
	K   int
	N   int       // batches seen
	sum []float32 // upper triangle of sum X^T X
}

// NewHessian starts an empty Hessian for k input features.
func NewHessian(k int) *Hessian { return &Hessian{K: k, sum: make([]float32, k*k)} }

// checkInputs refuses calibration rows x [rows, k] of another size or with a non-finite
// value: they would poison every weight.
func checkInputs(x []float32, rows, k int) error {
	if len(x) != rows*k {
		return fmt.Errorf("quantize: %d inputs for %d rows of %d", len(x), rows, k)
	}
	for i, v := range x {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return fmt.Errorf("quantize: calibration input %d (row %d) is %v", i%k, i/k, v)
		}
	}
	return nil
}

// Add accumulates one batch of rows x [rows, K] (one call = one sample, like add_batch with
// batch size 1) with a symmetric rank-k update. Non-finite inputs are an error: they would
// poison every weight.
func (h *Hessian) Add(x []float32, rows int) error {
	k := h.K
	if err := checkInputs(x, rows, k); err != nil {
		return err
	}
	blas32.Syrk(blas.Trans, 1, blas32.General{Rows: rows, Cols: k, Stride: k, Data: x}, 1,
		blas32.Symmetric{Uplo: blas.Upper, N: k, Stride: k, Data: h.sum})
	h.N++
	return nil
}

// Matrix is H = 2/n sum X^T X as a full symmetric [K, K] float64 matrix.
func (h *Hessian) Matrix() []float64 {
	k := h.K
	out := make([]float64, k*k)
	scale := 2 / float64(max(h.N, 1))
	for i := 0; i < k; i++ {
		for j := i; j < k; j++ {
			v := scale * float64(h.sum[i*k+j])
			out[i*k+j], out[j*k+i] = v, v
		}
	}
	return out
}

// Grid is one row's quantization grid: value = Scale * (code - Zero).
type Grid struct{ Scale, Zero float64 }

// findGrid is AutoGPTQ's Quantizer.find_params for one row of a group.
func findGrid(row []float64, bits int, sym bool) Grid {
	maxq := float64(int(1)<<bits - 1)
	xmin, xmax := 0.0, 0.0
	for _, v := range row {
		xmin, xmax = min(xmin, v), max(xmax, v)
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
	scale := (xmax - xmin) / maxq
	zero := (maxq + 1) / 2
	if !sym {
		zero = math.RoundToEven(-xmin / scale)
	}
	return Grid{scale, zero}
}

// code rounds v to the grid: clamp(round(v/scale) + zero, 0, maxq), half to even as torch.
func (g Grid) code(v float64, maxq float64) float64 {
	return min(max(math.RoundToEven(v/g.Scale)+g.Zero, 0), maxq)
}

// Result is a quantized weight.
type Result struct {
	N, K  int
	Codes []uint8   // [N, K] codes in the original column order
	Q     []float64 // [N, K] dequantized weight, original column order
	Grids [][]Grid  // [G][N] grid of each group and row
	GIdx  []int32   // [K] group of each input column
	Perm  []int     // act-order column order (nil without act-order)
	Damp  float64   // the damping actually used (raised when H was not positive definite)
}

// NumGroups is G.
func (r *Result) NumGroups() int { return len(r.Grids) }

// GPTQ quantizes w [n, k] (row-major, rows are outputs) with the Hessian of its inputs.
func GPTQ(w []float32, n, k int, hess *Hessian, o Options) (*Result, error) {
	if err := o.Validate(k); err != nil {
		return nil, err
	}
	if hess.K != k || hess.N == 0 {
		return nil, fmt.Errorf("quantize: a Hessian of %d features from %d samples for a weight with %d inputs", hess.K, hess.N, k)
	}
	maxq := float64(int(1)<<o.Bits - 1)
	W := make([]float64, n*k)
	for i, v := range w {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return nil, fmt.Errorf("quantize: weight element [%d, %d] is %v", i/k, i%k, v)
		}
		W[i] = float64(v)
	}
	H := hess.Matrix()
	col := func(j0, j1 int) func(row int) []float64 { // a row's slice of columns j0..j1
		return func(row int) []float64 { return W[row*k+j0 : row*k+j1] }
	}
	grids := func(j0, j1 int) []Grid {
		g := make([]Grid, n)
		at := col(j0, j1)
		for r := range g {
			g[r] = findGrid(at(r), o.Bits, o.Sym)
		}
		return g
	}
	var whole []Grid // group size -1: one grid per row from the original weights
	if o.GroupSize == -1 {
		whole = grids(0, k)
	}
	for j := 0; j < k; j++ { // dead inputs
		if H[j*k+j] == 0 {
			H[j*k+j] = 1
			for r := 0; r < n; r++ {
				W[r*k+j] = 0
			}
		}
	}
	var static [][]Grid
	if o.StaticGroups {
		for j := 0; j < k; j += o.GroupSize {
			static = append(static, grids(j, j+o.GroupSize))
		}
	}
	var perm []int
	if o.DescAct {
		perm = make([]int, k)
		for j := range perm {
			perm[j] = j
		}
		sort.SliceStable(perm, func(a, b int) bool { return H[perm[a]*k+perm[a]] > H[perm[b]*k+perm[b]] })
		W, H = permuteCols(W, n, k, perm), permuteSym(H, k, perm)
	}
	U64, damp, err := inverseCholesky(H, k, o.Damp)
	if err != nil {
		return nil, err
	}
	// The sweep runs in float32, as AutoGPTQ's does (and twice as fast as float64 here).
	U := make([]float32, len(U64))
	for i, v := range U64 {
		U[i] = float32(v)
	}
	Wf := make([]float32, len(W))
	for i, v := range W {
		Wf[i] = float32(v)
	}
	row64 := make([]float64, k)
	grids = func(j0, j1 int) []Grid { // grids of the float32 working weights
		g := make([]Grid, n)
		for r := range g {
			seg := row64[:j1-j0]
			for j := range seg {
				seg[j] = float64(Wf[r*k+j0+j])
			}
			g[r] = findGrid(seg, o.Bits, o.Sym)
		}
		return g
	}
	res := &Result{N: n, K: k, Codes: make([]uint8, n*k), Q: make([]float64, n*k), Perm: perm, Damp: damp}
	Q := res.Q
	codes := make([]float64, n*k)
	var cur []Grid
	nowIdx := 1
	for i1 := 0; i1 < k; i1 += o.BlockSize {
		i2 := min(i1+o.BlockSize, k)
		count := i2 - i1
		W1 := make([]float32, n*count) // the block's working columns
		for r := 0; r < n; r++ {
			copy(W1[r*count:(r+1)*count], Wf[r*k+i1:r*k+i2])
		}
		Err1 := make([]float32, n*count)
		for i := 0; i < count; i++ {
			j := i1 + i
			d := U[j*k+j]
			switch {
			case o.GroupSize == -1:
				cur = whole
			case o.StaticGroups:
				idx := j
				if perm != nil {
					idx = perm[j]
				}
				cur = static[idx/o.GroupSize]
			default:
				if j%o.GroupSize == 0 { // lazy: from W as it stood at the block's start
					cur = grids(j, j+o.GroupSize)
				}
				if j/o.GroupSize-nowIdx == -1 {
					res.Grids = append(res.Grids, cur)
					nowIdx++
				}
			}
			urow := U[j*k+i1 : j*k+i2]
			for r := 0; r < n; r++ {
				wv := float64(W1[r*count+i])
				c := cur[r].code(wv, maxq)
				q := float32(cur[r].Scale) * float32(c-cur[r].Zero)
				codes[r*k+j], Q[r*k+j] = c, float64(q)
				e := (float32(wv) - q) / d
				Err1[r*count+i] = e
				row := W1[r*count : (r+1)*count]
				for c2 := i; c2 < count; c2++ {
					row[c2] -= e * urow[c2]
				}
			}
		}
		// W[:, i2:] -= Err1 U[i1:i2, i2:]  (one GEMM on views of the row-major arrays)
		if i2 < k {
			blas32.Gemm(blas.NoTrans, blas.NoTrans, -1,
				blas32.General{Rows: n, Cols: count, Stride: count, Data: Err1},
				blas32.General{Rows: count, Cols: k - i2, Stride: k, Data: U[i1*k+i2:]}, 1,
				blas32.General{Rows: n, Cols: k - i2, Stride: k, Data: Wf[i2:]})
		}
	}
	if o.GroupSize == -1 {
		res.Grids = [][]Grid{whole}
	} else if o.StaticGroups {
		res.Grids = static
	}
	gs := o.GroupSize
	if gs == -1 {
		gs = k
	}
	res.GIdx = make([]int32, k)
	for j := range res.GIdx {
		res.GIdx[j] = int32(j / gs)
		if o.StaticGroups && perm != nil {
			res.GIdx[j] = int32(perm[j] / gs)
		}
	}
	if perm != nil { // back to the original column order
		inv := make([]int, k)
		for p, j := range perm {
			inv[j] = p
		}
		res.Q = permuteCols(Q, n, k, inv)
		codes = permuteCols(codes, n, k, inv)
		g := make([]int32, k)
		for j := range g {
			g[j] = res.GIdx[inv[j]]
		}
		res.GIdx = g
	}
	for i, c := range codes {
		res.Codes[i] = uint8(c)
	}
	return res, nil
}

// permuteCols returns x [n, k] with column j taken from column perm[j].
func permuteCols(x []float64, n, k int, perm []int) []float64 {
	out := make([]float64, len(x))
	for r := 0; r < n; r++ {
		for j, p := range perm {
			out[r*k+j] = x[r*k+p]
		}
	}
	return out
}

// permuteSym returns H[perm][:, perm].
func permuteSym(h []float64, k int, perm []int) []float64 {
	out := make([]float64, len(h))
	for a, pa := range perm {
		for b, pb := range perm {
			out[a*k+b] = h[pa*k+pb]
		}
	}
	return out
}

// inverseCholesky damps H and returns U, the upper Cholesky factor of H^-1 (H^-1 = U^T U),
// with one Cholesky factorization and one triangular inverse: with J the order-reversing
// permutation and J H J = L L^T, U = J L^-1 J. When H is not positive definite the damping is
// raised tenfold, up to three times, as a user of AutoGPTQ does by hand after its error; the
// damping used is returned.
func inverseCholesky(h []float64, k int, damp float64) ([]float64, float64, error) {
	var mean float64
	for j := 0; j < k; j++ {
		mean += h[j*k+j]
	}
	mean /= float64(k)
	for try := 0; try < 4; try++ {
		a := mat.NewSymDense(k, nil)
		for i := 0; i < k; i++ {
			for j := i; j < k; j++ {
				v := h[(k-1-i)*k+(k-1-j)] // J H J
				if i == j {
					v += damp * mean
				}
				a.SetSym(i, j, v)
			}
		}
		var ch mat.Cholesky
		if ch.Factorize(a) {
			var l mat.TriDense
			ch.LTo(&l)
			if err := l.InverseTri(&l); err == nil {
				out := make([]float64, k*k)
				for i := 0; i < k; i++ { // U[i][j] = Linv[k-1-i][k-1-j], upper
					for j := i; j < k; j++ {
						out[i*k+j] = l.At(k-1-i, k-1-j)
					}
				}
				return out, damp, nil
			}
		}
		damp *= 10
	}
	return nil, damp, notPositiveDefinite(damp / 10)
}

// notPositiveDefinite is the error of a Hessian that the highest damping tried, damp, did not
// make positive definite.
func notPositiveDefinite(damp float64) error {
	return fmt.Errorf("quantize: the Hessian is not positive definite even with damping %g of its mean diagonal: too few or degenerate calibration samples; give more varied calibration data (more or longer samples) or raise the damping", damp)
}
