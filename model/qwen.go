package model

// Qwen-7B (QWenLMHeadModel), one file: the blocks, their weights, and the forward pass that
// builds a gorgonia graph. Shapes: N = batch*seq rows, H hidden, P = heads*head_dim, M MLP
// branch width, V vocabulary.
//
//	x      = wte[ids]                                   [N, H]
//	block: h = x + c_proj(attn(rotary(q), rotary(k), v)) with q,k,v = c_attn(ln_1(x))
//	       x = h + mlp.c_proj(w1(ln_2(h)) * silu(w2(ln_2(h))))
//	logits = lm_head(ln_f(x))                           [N, V]
//
// A training graph marks every block's input and the last block's output (Checkpoint), where
// an executor with activation checkpointing keeps the forward for the backward.

import (
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	"github.com/qwen-tune/qwen-tune/autograd"
	"github.com/qwen-tune/qwen-tune/checkpoints"
)

// Param is one weight: its checkpoint name, its value (bf16 kept as uint16, or float32) and
// whether training updates it.
type Param struct {
	Name  string
	Value *tensor.Dense
	Train bool
}

// Projection is every matrix product of the model, y = x W^T (+ b). Dense is the plain
// implementation; LoRA and GPTQ-Int4 layers implement the same interface, so the blocks never
// know which one they hold.
type Projection interface {
	Forward(g *Graph, x *G.Node) (*G.Node, error)
}

// Wrapper is a projection that adds to another one (a LoRA layer): Unwrap returns the one it
// wraps, so code that asks what a layer is underneath (Quantized, shapes) sees through it.
type Wrapper interface {
	Projection
	Unwrap() Projection
}

// Unwrap returns the projection under every wrapper of p.
func Unwrap(p Projection) Projection {
	for {
		w, ok := p.(Wrapper)
		if !ok {
			return p
		}
		p = w.Unwrap()
	}
}

// Dense is a Linear layer with a full weight [out, in] and an optional bias [out].
type Dense struct {
	Weight, Bias *Param
}

func (d *Dense) Forward(g *Graph, x *G.Node) (*G.Node, error) {
	var b *G.Node
	if d.Bias != nil {
		b = g.Param(d.Bias)
	}
	return autograd.Linear(x, g.Param(d.Weight), b, d.Weight.Train, d.Bias != nil && d.Bias.Train)
}

// Embedder maps the graph's token ids (g.Step.IDs) to rows [N, H]. Table is the plain lookup;
// wrappers (trainable rows for special tokens) implement the same interface.
type Embedder interface {
	Forward(g *Graph) (*G.Node, error)
}

// Table is an embedding table [V, H].
type Table struct {
	Weight *Param
}

func (t *Table) Forward(g *Graph) (*G.Node, error) {
	return autograd.Embedding(g.Param(t.Weight), g.Step, g.Batch, g.Seq, g.Dtype, t.Weight.Train)
}

// Block is one transformer layer.
type Block struct {
	Layer int
	LN1   *Param     // ln_1 [H]
	QKV   Projection // attn.c_attn [3P, H] with bias [3P]
	Out   Projection // attn.c_proj [H, P]
	LN2   *Param     // ln_2 [H]
	Up    Projection // mlp.w1 [M, H], the linear branch
	Gate  Projection // mlp.w2 [M, H], the SiLU branch
	Down  Projection // mlp.c_proj [H, M]
}

// Slot is one projection of a block: its row of checkpoints.BlockLinears, its full module
// name (transformer.h.N.attn.c_attn) and the block field that holds it.
type Slot struct {
	checkpoints.Linear
	Name string
	P    *Projection
}

// Projections lists the block's projections in the order of checkpoints.BlockLinears.
func (b *Block) Projections() []Slot {
	fields := []*Projection{&b.QKV, &b.Out, &b.Up, &b.Gate, &b.Down}
	slots := make([]Slot, len(checkpoints.BlockLinears))
	for i, l := range checkpoints.BlockLinears {
		slots[i] = Slot{Linear: l, Name: checkpoints.LayerName(b.Layer, l.Module), P: fields[i]}
	}
	return slots
}

// norm is the field of the RMSNorm weight a table row names (checkpoints.LN1 or LN2), or nil.
func (b *Block) norm(name string) **Param {
	switch name {
	case checkpoints.LN1:
		return &b.LN1
	case checkpoints.LN2:
		return &b.LN2
	}
	return nil
}

// Model is Qwen-7B's weights and configuration.
type Model struct {
	Config *checkpoints.Config
	Embed  Embedder // transformer.wte [V, H]
	Blocks []*Block
	Norm   *Param     // transformer.ln_f [H]
	Head   Projection // lm_head [V, H]
	// GPTQ is the quantization of the block linears (bits, group size) when they are packed
	// Int4 layers, nil for floating-point weights.
	GPTQ *checkpoints.GPTQConfig
	// Exec, when set, runs inference graphs (Sessions, inference Runners) on an accelerator.
	Exec  Executor
	close func() error
}

// Forward builds the graph from token ids (g.Step.IDs) to logits [N, V], or to [batch, V]
// when g.Last is set (only the positions g.Step.Rows, as generation needs).
func (m *Model) Forward(g *Graph) (*G.Node, error) {
	x := g.Embed(m.Embed) // [N, H]
	for _, b := range m.Blocks {
		x = b.Forward(g, g.Checkpoint(x))
	}
	x = g.Checkpoint(x) // the blocks' output: what the final norm's backward reads
	if g.Last {
		x = g.SelectRows(x) // [B, H]
	}
	logits := g.Project(m.Head, g.RMSNorm(x, m.Norm))
	return logits, g.Err()
}

// Forward is one block: x [N, H] -> [N, H].
func (b *Block) Forward(g *Graph, x *G.Node) *G.Node {
	h := g.RMSNorm(x, b.LN1)
	qkv := g.Project(b.QKV, h)                                    // [N, 3P]
	q := g.Rotary(g.SplitHeads(qkv, 0))                           // [B, T, heads, head_dim]
	k := g.Rotary(g.SplitHeads(qkv, 1))                           // [B, T, heads, head_dim]
	v := g.SplitHeads(qkv, 2)                                     // [B, T, heads, head_dim]
	x = g.Add(x, g.Project(b.Out, g.Attention(q, k, v, b.Layer))) // attention [N, P]
	h = g.RMSNorm(x, b.LN2)
	mlp := g.SwiGLU(g.Project(b.Up, h), g.Project(b.Gate, h)) // [N, M]
	return g.Add(x, g.Project(b.Down, mlp))
}

// Projections lists every block's projections, block by block.
func (m *Model) Projections() []Slot {
	var slots []Slot
	for _, b := range m.Blocks {
		slots = append(slots, b.Projections()...)
	}
	return slots
}

// Params lists the plain weights (tables, norms, dense projections) in checkpoint order.
func (m *Model) Params() []*Param {
	var ps []*Param
	if t, ok := m.Embed.(*Table); ok {
		ps = append(ps, t.Weight)
	}
	for _, b := range m.Blocks {
		for _, s := range b.Projections() {
			if n := b.norm(s.Norm); n != nil {
				ps = append(ps, *n)
			}
			ps = append(ps, projParams(*s.P)...)
		}
	}
	return append(append(ps, m.Norm), projParams(m.Head)...)
}

func projParams(p Projection) []*Param {
	d, ok := p.(*Dense)
	if !ok {
		return nil
	}
	if d.Bias != nil {
		return []*Param{d.Weight, d.Bias}
	}
	return []*Param{d.Weight}
}

// Close releases the memory-mapped checkpoint the weights point into.
func (m *Model) Close() error {
	if m.close == nil {
		return nil
	}
	err := m.close()
	m.close = nil
	return err
}
