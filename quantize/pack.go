package quantize

// AutoGPTQ v1 ("gptq") packing, as Qwen-7B-Chat-Int4 stores each Linear (K inputs, N outputs,
// G groups, b bits, p = 32/b codes per int32):
//
//	qweight int32 [K/p, N]  code of input k for output n in bits b*(k%p).. of qweight[k/p, n]
//	qzeros  int32 [G, N/p]  (zero - 1) of output n in bits b*(n%p).. of qzeros[g, n/p]
//	scales  fp16  [G, N]
//	g_idx   int32 [K]       group of each input
//	W[n, k] = scales[g_idx[k], n] * (code[k, n] - zero[g_idx[k], n])
//
// 3-bit codes straddle words in AutoGPTQ's layout and are not packed here.

import (
	"fmt"
	"runtime"
	"sync"

	"github.com/qwen-tune/qwen-tune/autograd"
	"github.com/qwen-tune/qwen-tune/checkpoints"
)

// Pack lays out a GPTQ result as the layer it becomes; scales are rounded to fp16 as
// AutoGPTQ's fp16 layers store them. name is the module name, bias the float layer's (or nil).
func Pack(r *Result, bits int, name string, bias []float32) (*autograd.Int4, error) {
	if bits != 2 && bits != 4 && bits != 8 {
		return nil, fmt.Errorf("quantize: packing %d-bit codes is not supported (2, 4 or 8)", bits)
	}
	per := 32 / bits
	if r.K%per != 0 || r.N%per != 0 {
		return nil, fmt.Errorf("quantize: a %d x %d weight cannot be packed %d codes per int32 (both sizes must divide by %d)", r.N, r.K, per, per)
	}
	g := r.NumGroups()
	p := &autograd.Int4{Name: name, Bits: bits, K: r.K, N: r.N, G: g, QWeight: make([]int32, r.K/per*r.N), QZeros: make([]int32, g*r.N/per),
		Scales: make([]float32, g*r.N), GIdx: append([]int32(nil), r.GIdx...), Bias: bias}
	mask := uint32(1)<<bits - 1
	// outputs in parallel: each word of qweight holds one output's codes
	workers := min(runtime.GOMAXPROCS(0), max(1, r.N*r.K>>20))
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := w * r.N / workers; n < (w+1)*r.N/workers; n++ {
				for k := 0; k < r.K; k++ {
					c := uint32(r.Codes[n*r.K+k]) & mask
					i := (k/per)*r.N + n
					p.QWeight[i] = int32(uint32(p.QWeight[i]) | c<<(bits*(k%per)))
				}
			}
		}()
	}
	wg.Wait()
	for gi, grid := range r.Grids {
		for n, gr := range grid {
			z := uint32(int(gr.Zero)-1) & mask
			i := gi*r.N/per + n/per
			p.QZeros[i] = int32(uint32(p.QZeros[i]) | z<<(bits*(n%per)))
			p.Scales[gi*r.N+n] = checkpoints.F16ToF32(checkpoints.F32ToF16(float32(gr.Scale)))
		}
	}
	return p, p.Check()
}
