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
	"math"

	"github.com/qwen-tune/qwen-tune/checkpoints"
)

// Packed is one Linear in AutoGPTQ's layout.
type Packed struct {
	Bits, K, N, G int
	QWeight       []int32  // [K/p, N]
	QZeros        []int32  // [G, N/p]
	Scales        []uint16 // [G, N] fp16 bits
	GIdx          []int32  // [K]
}

// Pack lays out a GPTQ result; scales are rounded to fp16 as AutoGPTQ's fp16 layers store them.
func Pack(r *Result, bits int) (*Packed, error) {
	if bits != 2 && bits != 4 && bits != 8 {
		return nil, fmt.Errorf("quantize: packing %d-bit codes is not supported (2, 4 or 8)", bits)
	}
	per := 32 / bits
	if r.K%per != 0 || r.N%per != 0 {
		return nil, fmt.Errorf("quantize: a %d x %d weight cannot be packed %d codes per int32 (both sizes must divide by %d)", r.N, r.K, per, per)
	}
	g := r.NumGroups()
	p := &Packed{Bits: bits, K: r.K, N: r.N, G: g, QWeight: make([]int32, r.K/per*r.N), QZeros: make([]int32, g*r.N/per), Scales: make([]uint16, g*r.N), GIdx: append([]int32(nil), r.GIdx...)}
	mask := uint32(1)<<bits - 1
	for n := 0; n < r.N; n++ {
		for k := 0; k < r.K; k++ {
			c := uint32(r.Codes[n*r.K+k]) & mask
			i := (k/per)*r.N + n
			p.QWeight[i] = int32(uint32(p.QWeight[i]) | c<<(bits*(k%per)))
		}
	}
	for gi, grid := range r.Grids {
		for n, gr := range grid {
			z := uint32(int(gr.Zero)-1) & mask
			i := gi*r.N/per + n/per
			p.QZeros[i] = int32(uint32(p.QZeros[i]) | z<<(bits*(n%per)))
			p.Scales[gi*r.N+n] = checkpoints.F32ToF16(float32(gr.Scale))
		}
	}
	return p, nil
}

// Code is the code of input k for output n.
func (p *Packed) Code(k, n int) int {
	per := 32 / p.Bits
	return int(uint32(p.QWeight[(k/per)*p.N+n])>>(p.Bits*(k%per))) & (1<<p.Bits - 1)
}

// Zero is the zero point of group g for output n (the stored value plus one).
func (p *Packed) Zero(g, n int) int {
	per := 32 / p.Bits
	return int(uint32(p.QZeros[g*p.N/per+n/per])>>(p.Bits*(n%per)))&(1<<p.Bits-1) + 1
}

// Scale is the scale of group g for output n.
func (p *Packed) Scale(g, n int) float32 { return checkpoints.F16ToF32(p.Scales[g*p.N+n]) }

// Dequantize is the reference dequantizer: W [N, K] (PyTorch's Linear layout).
func (p *Packed) Dequantize() []float32 {
	w := make([]float32, p.N*p.K)
	for k := 0; k < p.K; k++ {
		g := int(p.GIdx[k])
		for n := 0; n < p.N; n++ {
			w[n*p.K+k] = p.Scale(g, n) * float32(p.Code(k, n)-p.Zero(g, n))
		}
	}
	return w
}

// Check validates shapes and g_idx (for a layer read from disk).
func (p *Packed) Check(name string) error {
	per := 32 / p.Bits
	switch {
	case p.K%per != 0 || p.N%per != 0:
		return fmt.Errorf("quantize: %s: %d x %d does not pack %d codes per int32", name, p.N, p.K, per)
	case len(p.QWeight) != p.K/per*p.N || len(p.QZeros) != p.G*p.N/per || len(p.Scales) != p.G*p.N || len(p.GIdx) != p.K:
		return fmt.Errorf("quantize: %s: tensor sizes do not fit K %d, N %d, %d groups", name, p.K, p.N, p.G)
	}
	for k, g := range p.GIdx {
		if g < 0 || int(g) >= p.G {
			return fmt.Errorf("quantize: %s: g_idx[%d] = %d is not a group in [0, %d)", name, k, g, p.G)
		}
	}
	for i, s := range p.Scales {
		if f := checkpoints.F16ToF32(s); math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) {
			return fmt.Errorf("quantize: %s: scale %d is %v", name, i, f)
		}
	}
	return nil
}
