package lora

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	"github.com/qwen-tune/qwen-tune/autograd"
	"github.com/qwen-tune/qwen-tune/checkpoints"
	"github.com/qwen-tune/qwen-tune/model"
)

// Config is an adapter's shape.
type Config struct {
	R       int      `json:"r"`
	Alpha   float64  `json:"lora_alpha"`
	Dropout float64  `json:"lora_dropout"`
	Targets []string `json:"target_modules"`
}

// Targets are the module names a target may match: Qwen's c_attn, c_proj (attention and MLP
// output), w1 and w2.
var Targets = checkpoints.LinearTargets()

// DefaultConfig is Qwen's LoRA recipe: r 64, alpha 16, dropout 0.05, all four targets.
func DefaultConfig() Config {
	return Config{R: 64, Alpha: 16, Dropout: 0.05, Targets: slices.Clone(Targets)}
}

// Scale is alpha / r.
func (c Config) Scale() float64 { return c.Alpha / float64(c.R) }

// Validate checks the settings.
func (c Config) Validate() error {
	switch {
	case c.R <= 0:
		return fmt.Errorf("lora: r must be positive, got %d", c.R)
	case !(c.Alpha > 0):
		return fmt.Errorf("lora: alpha must be positive, got %g", c.Alpha)
	case c.Dropout < 0 || c.Dropout >= 1:
		return fmt.Errorf("lora: dropout must be in [0, 1), got %g", c.Dropout)
	case len(c.Targets) == 0:
		return fmt.Errorf("lora: no target modules (choose among %s)", strings.Join(Targets, ", "))
	}
	for _, t := range c.Targets {
		if !slices.Contains(Targets, t) {
			return fmt.Errorf("lora: target module %q matches no layer of a Qwen model (choose among %s)", t, strings.Join(Targets, ", "))
		}
	}
	return nil
}

// Layer is one adapted projection: y = base(x) + scale * dropout(x) A^T B^T.
type Layer struct {
	Module  string // the module's name in the model, e.g. transformer.h.0.attn.c_attn
	Base    model.Projection
	A, B    *model.Param // A [r, in], B [out, r], float32
	Scale   float64
	Dropout float64
	key     uint64
}

// Forward implements model.Projection.
func (l *Layer) Forward(g *model.Graph, x *G.Node) (*G.Node, error) {
	y, err := l.Base.Forward(g, x)
	if err != nil {
		return nil, err
	}
	in := x
	if l.Dropout > 0 && g.Mode == model.Training {
		if in, err = autograd.Dropout(x, l.Dropout, l.key, g.Step); err != nil {
			return nil, err
		}
	}
	h, err := autograd.Linear(in, g.Param(l.A), nil, l.A.Train, false) // [N, r]
	if err != nil {
		return nil, err
	}
	d, err := autograd.ScaledLinear(h, g.Param(l.B), nil, l.Scale, l.B.Train, false) // [N, out]
	if err != nil {
		return nil, err
	}
	return G.Add(y, d)
}

// Adapter is the set of LoRA layers added to a model.
type Adapter struct {
	Config Config
	Layers []*Layer
	// Modules are full weights (wte, lm_head) loaded from the adapter's modules_to_save.
	Modules []*model.Param
}

// PEFT key prefix of every adapter tensor.
const keyPrefix = "base_model.model."

// KeyA and KeyB are a layer's tensor names in adapter_model.safetensors.
func (l *Layer) KeyA() string { return keyPrefix + l.Module + ".lora_A.weight" }
func (l *Layer) KeyB() string { return keyPrefix + l.Module + ".lora_B.weight" }

// Params lists A then B of every layer, in layer order.
func (a *Adapter) Params() []*model.Param {
	var ps []*model.Param
	for _, l := range a.Layers {
		ps = append(ps, l.A, l.B)
	}
	return ps
}

// Apply wraps the targeted projections of m in LoRA layers with A initialised as PEFT does
// (Kaiming-uniform with a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in))) from seed, and B zero.
func Apply(m *model.Model, c Config, seed uint64) (*Adapter, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	a := &Adapter{Config: c}
	r := rand.New(rand.NewPCG(seed, 0x6c6f7261))
	for _, s := range m.Projections() {
		if !slices.Contains(c.Targets, s.Target) {
			continue
		}
		if _, ok := (*s.P).(*Layer); ok {
			return nil, fmt.Errorf("lora: %s already has an adapter", s.Name)
		}
		out, in, err := projShape(*s.P, s.Name)
		if err != nil {
			return nil, err
		}
		bound := 1 / math.Sqrt(float64(in))
		av := make([]float32, c.R*in)
		for i := range av {
			av[i] = float32((2*r.Float64() - 1) * bound)
		}
		l := &Layer{Module: s.Name, Base: *s.P, Scale: c.Scale(), Dropout: c.Dropout, key: uint64(len(a.Layers) + 1),
			A: param(s.Name+".lora_A.weight", av, c.R, in), B: param(s.Name+".lora_B.weight", make([]float32, out*c.R), out, c.R)}
		*s.P = l
		a.Layers = append(a.Layers, l)
	}
	if len(a.Layers) == 0 {
		return nil, fmt.Errorf("lora: the targets %v match no layer of the model", c.Targets)
	}
	return a, nil
}

func param(name string, v []float32, shape ...int) *model.Param {
	return &model.Param{Name: name, Value: tensor.New(tensor.WithShape(shape...), tensor.WithBacking(v)), Train: true}
}

// projShape is a projection's [out, in].
func projShape(p model.Projection, module string) (int, int, error) {
	switch d := p.(type) {
	case *model.Dense:
		s := d.Weight.Value.Shape()
		return s[0], s[1], nil
	case *Layer:
		return projShape(d.Base, module)
	}
	if _, ok := p.(*model.Int4); ok {
		return 0, 0, fmt.Errorf("lora: %s is GPTQ Int4-quantized; LoRA applies to floating-point weights (use the model before quantization)", module)
	}
	return 0, 0, fmt.Errorf("lora: %s is not a floating-point (dense) layer; LoRA applies to dense weights", module)
}
