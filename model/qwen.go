package model

// Qwen-7B (QWenLMHeadModel), one file: the blocks, their weights, and the forward pass that
// builds a gorgonia graph. Shapes: N = batch*seq rows, H hidden, P = heads*head_dim, M MLP
// branch width, V vocabulary.
//
//	x      = wte[ids]                                   [N, H]
//	block: h = x + c_proj(attn(rotary(q), rotary(k), v)) with q,k,v = c_attn(ln_1(x))
//	       x = h + mlp.c_proj(w1(ln_2(h)) * silu(w2(ln_2(h))))
//	logits = lm_head(ln_f(x))                           [N, V]

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

// RowDelta is a trainable [S, H] table added to the rows Offset..Offset+S-1 of a frozen one.
type RowDelta struct {
	Delta  *Param
	Offset int
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

// Model is Qwen-7B's weights and configuration.
type Model struct {
	Config *checkpoints.Config
	Embed  *Param // transformer.wte [V, H]
	// EmbedRows, when set, adds trainable rows to wte for a range of ids (special tokens).
	EmbedRows *RowDelta
	Blocks    []*Block
	Norm      *Param     // transformer.ln_f [H]
	Head      Projection // lm_head [V, H]
	// Exec, when set, runs inference graphs (Sessions, inference Runners) on an accelerator.
	Exec  Executor
	close func() error
}

// Forward builds the graph from token ids (g.Step.IDs) to logits [N, V], or to [batch, V]
// when g.Last is set (only the positions g.Step.Rows, as generation needs).
func (m *Model) Forward(g *Graph) (*G.Node, error) {
	x := g.Embedding(m.Embed) // [N, H]
	if m.EmbedRows != nil {
		x = g.Add(x, g.EmbeddingRows(m.EmbedRows))
	}
	for _, b := range m.Blocks {
		x = b.Forward(g, x)
	}
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

// Params lists every weight in checkpoint order.
func (m *Model) Params() []*Param {
	ps := []*Param{m.Embed}
	for _, b := range m.Blocks {
		ps = append(ps, b.LN1)
		ps = append(ps, projParams(b.QKV)...)
		ps = append(ps, projParams(b.Out)...)
		ps = append(ps, b.LN2)
		for _, p := range []Projection{b.Up, b.Gate, b.Down} {
			ps = append(ps, projParams(p)...)
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
