//go:build qtcuda || cudaemu

package autograd

// A hand-composed batch-1 decode step of a Qwen-7B-shaped model with random bf16 weights, to
// measure what these kernels deliver on a GPU before the graph executor drives them:
// per layer c_attn GEMV (+bias), rotary on q and k, the cache append, attention over the
// cache (two launches), c_proj GEMV, residual add fused with the next RMSNorm, one GEMV over
// w1 and w2 stacked, SwiGLU, mlp.c_proj GEMV, residual add fused with the next layer's RMSNorm
// (ln_f after the last); then the lm_head GEMV. 11 launches per layer.

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"
	"unsafe"
)

// DecodeShape is the part of a model's config the step needs.
type DecodeShape struct {
	Vocab, Hidden, Layers, Heads, HeadDim, MLP int
}

// DecodeResult is the measurement.
type DecodeResult struct {
	Tokens        int
	TokensPerSec  float64
	WeightBytes   int64
	FloorTokS     float64 // tokens/s if every weight byte moved at the GEMV's measured bandwidth
	LaunchesPerTk int
}

type layerWeights struct {
	ln1, qkv, qkvBias, out, ln2, upGate, down *Buffer // upGate: w1 rows then w2 rows, [2M, H]
}

// DecodeBench runs tokens decoding steps after a context of ctx positions (random cache
// contents) and returns the achieved tokens/s.
func DecodeBench(d *Device, s DecodeShape, ctx, tokens int) (DecodeResult, error) {
	r := rand.New(rand.NewPCG(7, 7))
	var res DecodeResult
	var all []*Buffer
	defer func() {
		for _, b := range all {
			d.Free(b)
		}
	}()
	bf := func(n int, std float64, what string) (*Buffer, error) {
		b, err := Upload(d, randBF16(r, n, std), what)
		all = append(all, b)
		res.WeightBytes += int64(n) * 2
		return b, err
	}
	var allocErr error
	f32 := func(n int, what string) (*Buffer, error) {
		b, err := d.Alloc(int64(n)*4, what)
		all = append(all, b)
		if allocErr == nil {
			allocErr = err
		}
		return b, err
	}
	h, p, m := s.Hidden, s.Heads*s.HeadDim, s.MLP
	var err error
	layers := make([]layerWeights, s.Layers)
	for l := range layers {
		lw := &layers[l]
		for _, w := range []struct {
			dst  **Buffer
			n    int
			std  float64
			what string
		}{{&lw.ln1, h, 1, "ln_1"}, {&lw.qkv, 3 * p * h, 0.02, "c_attn"}, {&lw.qkvBias, 3 * p, 0.02, "c_attn bias"}, {&lw.out, h * p, 0.02, "c_proj"},
			{&lw.ln2, h, 1, "ln_2"}, {&lw.upGate, 2 * m * h, 0.02, "w1 and w2"}, {&lw.down, h * m, 0.02, "mlp.c_proj"}} {
			if *w.dst, err = bf(w.n, w.std, fmt.Sprintf("layer %d %s", l, w.what)); err != nil {
				return res, err
			}
		}
	}
	head, err := bf(s.Vocab*h, 0.02, "lm_head")
	if err != nil {
		return res, err
	}
	lnf, err := bf(h, 1, "ln_f")
	if err != nil {
		return res, err
	}
	maxLen := ctx + tokens
	kc := make([]*Buffer, s.Layers)
	vc := make([]*Buffer, s.Layers)
	for l := range kc {
		if kc[l], err = f32(maxLen*p/2, "k cache"); err != nil { // bf16
			return res, err
		}
		if vc[l], err = f32(maxLen*p/2, "v cache"); err != nil {
			return res, err
		}
	}
	x, err := Upload(d, randF32(r, h), "hidden")
	all = append(all, x)
	if err != nil {
		return res, err
	}
	xn, _ := f32(h, "normed") // errors are collected in allocErr
	qkv, _ := f32(3*p, "qkv")
	att, _ := f32(p, "attention")
	proj, _ := f32(h, "projection")
	upGate, _ := f32(2*m, "up and gate")
	logits, _ := f32(s.Vocab, "logits")
	if allocErr != nil {
		return res, allocErr
	}
	base, err := Upload(d, []float64{10000}, "rotary base")
	all = append(all, base)
	if err != nil {
		return res, err
	}
	scale := float32(1 / math.Sqrt(float64(s.HeadDim)))
	parts, err := d.NewDecodeParts(1, s.Heads, s.HeadDim, maxLen)
	if err != nil {
		return res, err
	}
	defer parts.Free(d)
	posBuf, err := Upload(d, []int32{0}, "position")
	all = append(all, posBuf)
	if err != nil {
		return res, err
	}
	// Per layer: x holds the residual stream; the previous layer's last residual add is fused
	// into this layer's first RMSNorm (proj holds what is still to be added).
	step := func(pos int) error {
		launches := 0
		p32 := []int32{int32(pos)}
		if err := cudaErr("cuMemcpyHtoD(position)", d.drv.memcpyHtoD(posBuf.Ptr, unsafe.Pointer(&p32[0]), 4)); err != nil {
			return err
		}
		if err := d.RMSNormBF16(xn, x, layers[0].ln1, 1, h, 1e-6); err != nil {
			return err
		}
		launches++
		for l := range layers {
			lw := layers[l]
			ops := []func() error{
				func() error { return d.GemvBF16(qkv, xn, lw.qkv, lw.qkvBias, 3*p, h) },
				func() error { return d.Rotary(qkv, qkv, base, 1, 1, 2*s.Heads, s.HeadDim, pos, 3*p, 3*p) }, // q and k are adjacent
				func() error {
					return d.KVAppend(kc[l], vc[l], qkv.Slice(int64(p*4), int64(2*p*4)), qkv.Slice(int64(2*p*4), int64(p*4)), 1, 1, p, 3*p, 3*p, maxLen, pos)
				},
				func() error {
					return d.AttentionDecode(att, qkv, kc[l], vc[l], parts, 1, s.Heads, s.HeadDim, maxLen, posBuf, scale, 0)
				},
				func() error { return d.GemvBF16(proj, att, lw.out, nil, h, p) },
				func() error { return d.AddRMSNormBF16(xn, x, proj, lw.ln2, 1, h, 1e-6) },
				func() error { return d.GemvBF16(upGate, xn, lw.upGate, nil, 2*m, h) },
				func() error {
					return d.SwiGLU(upGate, upGate, upGate.Slice(int64(m*4), int64(m*4)), int64(m))
				},
				func() error { return d.GemvBF16(proj, upGate, lw.down, nil, h, m) },
				func() error {
					next := lnf
					if l+1 < len(layers) {
						next = layers[l+1].ln1
					}
					return d.AddRMSNormBF16(xn, x, proj, next, 1, h, 1e-6)
				},
			}
			for _, op := range ops {
				if err := op(); err != nil {
					return fmt.Errorf("layer %d: %w", l, err)
				}
			}
			launches += len(ops) + 1 // attention is two launches
		}
		res.LaunchesPerTk = launches + 1
		return d.GemvBF16(logits, xn, head, nil, s.Vocab, h)
	}
	if err := step(ctx); err != nil { // warm-up
		return res, err
	}
	if err := d.Sync(); err != nil {
		return res, err
	}
	start := time.Now()
	for t := 0; t < tokens; t++ {
		if err := step(ctx + t); err != nil {
			return res, err
		}
	}
	if err := d.Sync(); err != nil {
		return res, err
	}
	res.Tokens = tokens
	res.TokensPerSec = float64(tokens) / time.Since(start).Seconds()
	return res, nil
}
