package quantize

// RTN is plain round-to-nearest on the same grid as GPTQ (per row and contiguous group, from
// the original weights): the baseline GPTQ must beat. It returns the dequantized weight.
func RTN(w []float32, n, k int, o Options) []float64 {
	gs := o.GroupSize
	if gs == -1 {
		gs = k
	}
	maxq := float64(int(1)<<o.Bits - 1)
	out := make([]float64, n*k)
	row := make([]float64, gs)
	for r := 0; r < n; r++ {
		for j0 := 0; j0 < k; j0 += gs {
			for j := range row {
				row[j] = float64(w[r*k+j0+j])
			}
			g := findGrid(row, o.Bits, o.Sym)
			for j, v := range row {
				out[r*k+j0+j] = g.Scale * (g.code(v, maxq) - g.Zero)
			}
		}
	}
	return out
}
