package quantize

import (
	"math"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"
)

// RTNResult quantizes w [n, k] by plain round-to-nearest on GPTQ's grid (per row and
// contiguous group, from the original weights): the baseline GPTQ must beat. It returns the
// result in the same form as GPTQ, so it packs and saves alike.
func RTNResult(w []float32, n, k int, o Options) (*Result, error) {
	if err := o.Validate(k); err != nil {
		return nil, err
	}
	gs := o.GroupSize
	if gs == -1 {
		gs = k
	}
	maxq := float64(int(1)<<o.Bits - 1)
	res := &Result{N: n, K: k, Codes: make([]uint8, n*k), Q: make([]float64, n*k), GIdx: make([]int32, k), Damp: o.Damp}
	row := make([]float64, gs)
	for j0 := 0; j0 < k; j0 += gs {
		grid := make([]Grid, n)
		for r := 0; r < n; r++ {
			for j := range row {
				row[j] = float64(w[r*k+j0+j])
			}
			g := findGrid(row, o.Bits, o.Sym)
			grid[r] = g
			for j, v := range row {
				c := g.code(v, maxq)
				res.Codes[r*k+j0+j] = uint8(c)
				res.Q[r*k+j0+j] = g.Scale * (c - g.Zero)
			}
		}
		res.Grids = append(res.Grids, grid)
		for j := j0; j < j0+gs; j++ {
			res.GIdx[j] = int32(j0 / gs)
		}
	}
	return res, nil
}

// RelativeError is ||X (W - Q)^T||_F / ||X W^T||_F on calibration rows x [rows, k] (a sample
// of the layer's inputs), with w [n, k] and its dequantized q, computed in float32.
func RelativeError(x []float32, rows int, w []float32, q []float64, n, k int) float64 {
	d := make([]float32, len(w))
	for i, v := range w {
		d[i] = v - float32(q[i])
	}
	xw, xd := make([]float32, rows*n), make([]float32, rows*n)
	xs := blas32.General{Rows: rows, Cols: k, Stride: k, Data: x[:rows*k]}
	blas32.Gemm(blas.NoTrans, blas.Trans, 1, xs, blas32.General{Rows: n, Cols: k, Stride: k, Data: w}, 0, blas32.General{Rows: rows, Cols: n, Stride: n, Data: xw})
	blas32.Gemm(blas.NoTrans, blas.Trans, 1, xs, blas32.General{Rows: n, Cols: k, Stride: k, Data: d}, 0, blas32.General{Rows: rows, Cols: n, Stride: n, Data: xd})
	var num, den float64
	for i := range xw {
		num += float64(xd[i]) * float64(xd[i])
		den += float64(xw[i]) * float64(xw[i])
	}
	if den == 0 {
		return 0
	}
	return math.Sqrt(num / den)
}
