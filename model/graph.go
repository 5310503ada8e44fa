package model

import (
	"fmt"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	"github.com/qwen-tune/qwen-tune/autograd"
)

// Mode is where a graph is used. Qwen differs between them only in long-context scaling:
// dynamic NTK and LogN attention apply at inference, never in training. Evaluation is the
// training computation without dropout (validation during fine-tuning, calibration).
type Mode int

const (
	Training Mode = iota
	Inference
	Evaluation
)

// Graph is one gorgonia graph of the model for a fixed batch x seq shape, with the Step its
// ops read at run time. Its methods wrap the autograd ops with the model's settings and keep
// the first error, so the model reads as a sequence of layers; after an error every method
// returns nil and Err reports it.
type Graph struct {
	*G.ExprGraph
	Model      *Model
	Step       *autograd.Step
	Batch, Seq int
	Mode       Mode
	Dtype      tensor.Dtype // activations: Float32, or Float64 for gradient checks
	Last       bool         // logits only at Step.Rows (one position per row)
	nodes      map[*Param]*G.Node
	err        error
}

// NewGraph starts a graph of m for batch x seq positions.
func NewGraph(m *Model, batch, seq int, mode Mode, last bool) *Graph {
	return &Graph{
		ExprGraph: G.NewGraph(), Model: m, Step: &autograd.Step{Batch: batch, Seq: seq, RotaryBase: m.Config.RotaryEmbBase},
		Batch: batch, Seq: seq, Mode: mode, Dtype: tensor.Float32, Last: last, nodes: map[*Param]*G.Node{},
	}
}

// Err is the first error met while building.
func (g *Graph) Err() error { return g.err }

func (g *Graph) keep(n *G.Node, err error, what string) *G.Node {
	if err != nil {
		g.err = fmt.Errorf("model: %s: %w", what, err)
		return nil
	}
	return n
}

// Param is p's node in this graph (one node per parameter, holding p's value without a copy).
func (g *Graph) Param(p *Param) *G.Node {
	if n, ok := g.nodes[p]; ok {
		return n
	}
	n := G.NewTensor(g.ExprGraph, p.Value.Dtype(), p.Value.Dims(), G.WithShape(p.Value.Shape()...), G.WithName(p.Name), G.WithValue(p.Value))
	g.nodes[p] = n
	return n
}

// Nodes returns the parameter nodes created so far.
func (g *Graph) Nodes() map[*Param]*G.Node { return g.nodes }

// Embed is e's rows for the graph's token ids.
func (g *Graph) Embed(e Embedder) *G.Node {
	if g.err != nil {
		return nil
	}
	n, err := e.Forward(g)
	return g.keep(n, err, "embedding")
}

func (g *Graph) RMSNorm(x *G.Node, p *Param) *G.Node {
	if g.err != nil {
		return nil
	}
	n, err := autograd.RMSNorm(x, g.Param(p), g.Model.Config.LayerNormEpsilon, p.Train)
	return g.keep(n, err, p.Name)
}

func (g *Graph) Project(p Projection, x *G.Node) *G.Node {
	if g.err != nil {
		return nil
	}
	n, err := p.Forward(g, x)
	return g.keep(n, err, "projection")
}

func (g *Graph) SplitHeads(qkv *G.Node, part int) *G.Node {
	if g.err != nil {
		return nil
	}
	c := g.Model.Config
	n, err := autograd.SplitHeads(qkv, part, g.Batch, g.Seq, c.NumAttentionHeads, c.KVChannels)
	return g.keep(n, err, "attention heads")
}

func (g *Graph) Rotary(x *G.Node) *G.Node {
	if g.err != nil {
		return nil
	}
	n, err := autograd.Rotary(x, g.Step)
	return g.keep(n, err, "rotary")
}

func (g *Graph) Attention(q, k, v *G.Node, layer int) *G.Node {
	if g.err != nil {
		return nil
	}
	n, err := autograd.Attention(q, k, v, layer, g.Step)
	return g.keep(n, err, fmt.Sprintf("layer %d attention", layer))
}

func (g *Graph) SwiGLU(up, gate *G.Node) *G.Node {
	if g.err != nil {
		return nil
	}
	n, err := autograd.SwiGLU(up, gate)
	return g.keep(n, err, "mlp")
}

func (g *Graph) Add(a, b *G.Node) *G.Node {
	if g.err != nil {
		return nil
	}
	n, err := G.Add(a, b)
	return g.keep(n, err, "residual")
}

// Checkpoint marks x, a block's input (or the last block's output), in a training graph:
// the GPU executor may keep only these values of the forward and compute the rest of a
// block again for its backward. Other modes build no mark.
func (g *Graph) Checkpoint(x *G.Node) *G.Node {
	if g.err != nil || g.Mode != Training {
		return x
	}
	n, err := autograd.Checkpoint(x)
	return g.keep(n, err, "block boundary")
}

func (g *Graph) SelectRows(x *G.Node) *G.Node {
	if g.err != nil {
		return nil
	}
	n, err := autograd.SelectRows(x, g.Step, g.Batch, g.Seq)
	return g.keep(n, err, "last positions")
}

// LossGraph builds m's graph of batch x seq positions in mode through to the loss: the
// graph and its loss node (the training graph before its gradients).
func (m *Model) LossGraph(batch, seq int, mode Mode) (*Graph, *G.Node, error) {
	g := NewGraph(m, batch, seq, mode, false)
	logits, err := m.Forward(g)
	if err != nil {
		return nil, nil, err
	}
	loss, err := g.Loss(logits)
	return g, loss, err
}

// Loss is the shifted next-token cross-entropy of logits against Step.Labels.
func (g *Graph) Loss(logits *G.Node) (*G.Node, error) {
	if g.err != nil {
		return nil, g.err
	}
	n, err := autograd.CrossEntropy(logits, g.Step)
	return g.keep(n, err, "loss"), g.err
}
