//go:build qtcuda || cudaemu

package cuda

// What is live at a training program's arena peak (Device.PlanGrad): the schedule entry
// where the most arena bytes are live, and the buffers live there, named by the node whose
// value each holds or whose scratch it is, so that the arena's size can be accounted for.

import (
	"fmt"
	"strings"

	"github.com/qwen-tune/qwen-tune/autograd"
	G "gorgonia.org/gorgonia"
)

// Two savings of arena bytes that launch the same kernels on the same values (tests compare
// the gradients with and without them, bit for bit).
var (
	// swigluGradInPlace: SwiGLU's input gradients over its inputs when they die there.
	swigluGradInPlace = true
	// keepBF16: a value that every reader rounds to bf16 first is kept in bf16
	// (multipliedInBF16).
	keepBF16 = true
)

// ArenaPeak is the schedule entry of a program where the most arena bytes are live.
type ArenaPeak struct {
	// At is the entry (a node's launches, or a node of a block computed again) and Node
	// names it.
	At   int
	Node string
	// Live is the bytes live there, each buffer aligned to ArenaAlign: no placement's arena
	// is smaller; the arena's size less Live is what placement loses to fragmentation.
	Live int64
	// Buffers are the buffers live there, the largest first.
	Buffers []LiveBuffer
}

// LiveBuffer is one buffer of the arena: its bytes, the schedule entries it lives from and
// to, and what it holds: "op (node)" for a node's value, "scratch of op (node)" for a node's
// scratch, with " [recomputed]" for a block's second copy.
type LiveBuffer struct {
	What        string
	Bytes       int64
	First, Last int
}

func (b LiveBuffer) String() string {
	return fmt.Sprintf("%d bytes, entries %d-%d: %s", b.Bytes, b.First, b.Last, b.What)
}

// String lists the peak's buffers, one per line.
func (a ArenaPeak) String() string {
	var s strings.Builder
	fmt.Fprintf(&s, "%d bytes live at entry %d, %s:", a.Live, a.At, a.Node)
	for _, b := range a.Buffers {
		fmt.Fprintf(&s, "\n\t%v", b)
	}
	return s.String()
}

// peakOf is the planner's peak, its buffers named.
func (p *planner) peakOf() ArenaPeak {
	at, live := autograd.PeakLive(p.reqs, autograd.ArenaAlign)
	pk := ArenaPeak{At: at, Live: live, Node: p.entry(at)}
	for _, i := range autograd.LiveAt(p.reqs, at) {
		pk.Buffers = append(pk.Buffers, p.buffer(i))
	}
	return pk
}

// buffers is every buffer of the arena, in the order the compiler asked for them.
func (p *planner) buffers() []LiveBuffer {
	out := make([]LiveBuffer, len(p.reqs))
	for i := range p.reqs {
		out[i] = p.buffer(i)
	}
	return out
}

func (p *planner) buffer(i int) LiveBuffer {
	r := p.reqs[i]
	return LiveBuffer{What: p.what(i), Bytes: r.Bytes, First: r.First, Last: r.Last}
}

// entries names the schedule's entries.
func (p *planner) entries() []string {
	out := make([]string, len(p.cur))
	for i := range out {
		out[i] = p.entry(i)
	}
	return out
}

// entry names schedule entry i.
func (p *planner) entry(i int) string {
	if i < 0 || i >= len(p.cur) {
		return "the program's end"
	}
	s := nodeName(p.cur[i])
	if p.again[i] {
		s += " [recomputed]"
	}
	return s
}

// what names buffer i: its owners, the first to the last (a value computed in place
// over its input takes the input's buffer over).
func (p *planner) what(i int) string {
	r := p.reqs[i]
	if len(p.owner[i]) == 0 {
		return "scratch of " + p.entry(r.First)
	}
	var s strings.Builder
	for j, n := range p.owner[i] {
		if j > 0 {
			s.WriteString(", then ")
		}
		s.WriteString(nodeName(n))
	}
	if r.First < len(p.again) && p.again[r.First] {
		s.WriteString(" [recomputed]")
	}
	return s.String()
}

// own records n as the (next) owner of b.
func (p *planner) own(b *Buffer, n *G.Node) {
	if i, ok := p.index[b]; ok {
		p.owner[i] = append(p.owner[i], n)
	}
}

func nodeName(n *G.Node) string { return fmt.Sprintf("%s (%s)", n.Op(), n.Name()) }
