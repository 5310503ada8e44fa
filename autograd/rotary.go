package autograd

// Rotary position embedding, NeoX "rotate half" (not interleaved), as Qwen applies it to q and k:
//
//	x [B, T, H, D] -> y [B, T, H, D], half = D/2, position p = Step.Past + t
//	inv_freq[i] = base_b^(-2i/D) (float32), angle = float32(p) * inv_freq[i]
//	y[..., i]      = x[i] cos - x[i+half] sin        i < half
//	y[..., i+half] = x[i+half] cos + x[i] sin
//
// With packing, p is Step.Positions[b, t] instead (restarting in each packed sequence).
// base_b is row b's base (Step.Base): the dynamic-NTK base for long prompts at inference,
// rotary_emb_base otherwise. Backward is the inverse rotation (angle -> -angle).

import (
	"fmt"
	"math"

	"github.com/chewxy/hm"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// RotaryOp is the op of Rotary and of its gradient (Inverse).
type RotaryOp struct {
	base
	step    *Step
	inverse bool
}

// Rotary rotates q or k [B, T, H, D] by the positions and bases in step.
func Rotary(x *G.Node, step *Step) (*G.Node, error) {
	return G.ApplyOp(&RotaryOp{base: newBase("Rotary"), step: step}, x)
}

func (o *RotaryOp) Arity() int    { return 1 }
func (o *RotaryOp) Type() hm.Type { return hm.NewFnType(tt(4, tvA), tt(4, tvA)) }
func (o *RotaryOp) InferShape(in ...G.DimSizer) (tensor.Shape, error) {
	x, err := shapeOf(in[0])
	if err != nil {
		return nil, err
	}
	if err := wantDims("Rotary", x, 4, "x"); err != nil {
		return nil, err
	}
	if x[3]%2 != 0 {
		return nil, fmt.Errorf("autograd: Rotary: head dim %d is odd", x[3])
	}
	return x.Clone(), nil
}

func (o *RotaryOp) Do(v ...G.Value) (G.Value, error) {
	x, err := dense(v[0], o.name)
	if err != nil {
		return nil, err
	}
	s := x.Shape()
	if s[0] != o.step.Batch || s[1] != o.step.Seq {
		return nil, fmt.Errorf("autograd: Rotary: input %v but the step is %d x %d", s, o.step.Batch, o.step.Seq)
	}
	switch x.Dtype() {
	case tensor.Float32:
		return rotate[float32](x, o.step, o.inverse, o.pool), nil
	case tensor.Float64:
		return rotate[float64](x, o.step, o.inverse, o.pool), nil
	}
	return nil, fmt.Errorf("autograd: Rotary of type %v", x.Dtype())
}

// InvFreq is Qwen's rotary inverse frequencies in float32: base^(-2i/dim), i < dim/2.
func InvFreq(base float64, dim int) []float32 {
	f := make([]float32, dim/2)
	for i := range f {
		f[i] = float32(1 / math.Pow(base, float64(2*i)/float64(dim)))
	}
	return f
}

// RotaryAngle is the float32 angle of position p at inverse frequency f, as torch computes it.
func RotaryAngle(p int, f float32) float64 { return float64(float32(p) * f) }

func rotate[T Float](x *tensor.Dense, st *Step, inverse bool, p *pool) *tensor.Dense {
	s := x.Shape()
	nb, nt, nh, d := s[0], s[1], s[2], s[3]
	half := d / 2
	out := p.get(x.Dtype(), s...)
	xd, yd := x.Data().([]T), out.Data().([]T)
	sign := 1.0
	if inverse {
		sign = -1
	}
	freqs := make([][]float32, nb)
	for b := range freqs {
		if b == 0 || st.base(b) != st.base(b-1) {
			freqs[b] = InvFreq(st.base(b), d)
		} else {
			freqs[b] = freqs[b-1]
		}
	}
	parallel(nb*nt, func(bt int) {
		b, t := bt/nt, bt%nt
		freq := freqs[b]
		cos, sin := make([]T, half), make([]T, half)
		for i, f := range freq {
			a := RotaryAngle(st.position(b, t), f)
			cos[i], sin[i] = T(math.Cos(a)), T(sign*math.Sin(a))
		}
		for h := 0; h < nh; h++ {
			off := (bt*nh + h) * d
			in, o := xd[off:off+d], yd[off:off+d]
			for i := 0; i < half; i++ {
				x1, x2 := in[i], in[i+half]
				o[i] = x1*cos[i] - x2*sin[i]
				o[i+half] = x2*cos[i] + x1*sin[i]
			}
		}
	})
	return out
}

func (o *RotaryOp) DiffWRT(int) []bool { return []bool{true} }

func (o *RotaryOp) SymDiff(_ G.Nodes, _, grad *G.Node) (G.Nodes, error) {
	dx, err := G.ApplyOp(&RotaryOp{base: newBase("RotaryGrad"), step: o.step, inverse: !o.inverse}, grad)
	return G.Nodes{dx}, err
}
