//go:build qtcuda || cudaemu

package cuda

// Trained parameters read in float32. A parameter a ParamSet keeps has its float32 values on
// the device (the optimizer's); a program compiled while the set exists reads those where
// every reader of the parameter is a GEMM that takes it as its weight (a projection's, or a
// projection's input gradient's) and it is small (a LoRA matrix, special-token rows): each
// such GEMM rounds the values to bf16 into scratch of its node just before it runs, with
// to_bf16_rows, the rounding (to nearest, ties to even) that wrote the set's bf16 copies,
// so the GEMMs read the same bf16 weights bit for bit. The set then keeps no bf16 copy of
// it: at Qwen-7B's LoRA r 64, 0.27 GiB less that every update rewrote.
//
// A parameter read otherwise (a table gathered by rows, a whole table trained in full) keeps
// a bf16 copy in the set, made when the first program reads it and rewritten by every
// Upload, Update and GoBack; so does a parameter a program had uploaded before the set was
// made (that program reads the copy). A program that reads a set's float32 values and runs
// after the set is closed refuses to run: compile it again (it then reads the host's values,
// uploaded in bf16 as any weight).

import (
	"fmt"

	"github.com/qwen-tune/qwen-tune/autograd"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// roundTrainedAtUse switches the rounding at use on (tests compare the gradients with and
// without it, bit for bit); off, a ParamSet keeps a bf16 copy of every parameter.
var roundTrainedAtUse = true

// maxRoundedAtUse is the most bf16 bytes a parameter rounded at use may take: each GEMM
// reading it needs that much scratch (a LoRA matrix of Qwen-7B takes at most 1.6 MB; a whole
// table, 1.16 GiB, keeps its copy).
const maxRoundedAtUse = 64 << 20

// trainedWeight places the parameter n, which the set s keeps: its float32 values when every
// reader can round them (nil, and the set's bf16 copy made, otherwise).
func (c *compiler) trainedWeight(n *G.Node, key *tensor.Dense, s *ParamSet) (*value, error) {
	i := s.index(key)
	if i < 0 {
		return nil, fmt.Errorf("cuda: parameter %s is not in its parameter set", n.Name())
	}
	if s.bf16[i] != nil || !c.roundsAtUse(n, s.sizes[i]*2) {
		return nil, s.copyFor(i)
	}
	sh := n.Shape()
	rows, cols := 1, sh[len(sh)-1]
	if len(sh) == 2 {
		rows = sh[0]
	}
	return &value{buf: s.slice(s.master, i), rows: rows, cols: cols, stride: cols, root: n, param: true, set: s}, nil
}

// roundsAtUse: every reader of the parameter n (of bytes in bf16) takes it as a GEMM's
// weight, which the GEMM's node can round into scratch of its own.
func (c *compiler) roundsAtUse(n *G.Node, bytes int64) bool {
	if bytes > maxRoundedAtUse || len(c.users[n]) == 0 {
		return false
	}
	for _, u := range c.users[n] {
		k := c.kids[u]
		switch u.Op().(type) {
		case *autograd.LinearOp:
			if len(k) < 2 || k[1] != n || k[0] == n || len(k) > 2 && k[2] == n {
				return false
			}
		case *autograd.LinearGradXOp:
			if len(k) != 2 || k[1] != n || k[0] == n {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// weightBF16 is the bf16 weight w of a GEMM of the current node and the launch that makes
// it: w's buffer as it is, or for a parameter a ParamSet keeps in float32, scratch of this
// node and the rounding of the set's values into it.
func (c *compiler) weightBF16(w *value) (*Buffer, func() error) {
	if w.set == nil {
		return w.buf, func() error { return nil }
	}
	cnt := w.rows * w.cols
	b := c.pl.get(int64(cnt) * 2)
	c.pl.put(b) // only used inside this node's launches
	d, s, src, name := c.d, w.set, w.buf, w.root.Name()
	return b, func() error {
		if s.master == nil {
			return fmt.Errorf("cuda: parameter %s: the parameter set holding its values was closed; compile the program again", name)
		}
		return d.ToBF16Rows(b, src, 1, cnt, cnt)
	}
}

// index is where key is in s (-1: not there).
func (s *ParamSet) index(key *tensor.Dense) int {
	for i, k := range s.keys {
		if k == key {
			return i
		}
	}
	return -1
}

// copyFor gives parameter i a bf16 copy, which the programs read as its weight and each
// Upload, Update and GoBack rewrites: made now from the set's values, unless it has one.
func (s *ParamSet) copyFor(i int) error {
	if s.bf16[i] != nil {
		return nil
	}
	d, n := s.d, s.sizes[i]
	b, err := d.Alloc(n*2, s.names[i])
	if err != nil {
		return err
	}
	if err := d.ToBF16Rows(b, s.slice(s.master, i), 1, int(n), int(n)); err != nil {
		d.Free(b)
		return err
	}
	s.bf16[i] = b
	d.weights[s.keys[i]] = b
	return nil
}
