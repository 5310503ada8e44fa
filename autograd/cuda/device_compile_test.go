//go:build cudaemu || qtcuda

package cuda_test

import (
	"strings"
	"testing"

	G "gorgonia.org/gorgonia"
)

// TestDeviceFailedCompileFreesAll: a training graph whose compilation fails after its
// attention (here a kept node that is only a part of the fused qkv gradient) leaves no device
// memory behind, the attention scratch included.
func TestDeviceFailedCompileFreesAll(t *testing.T) {
	d := openDevice(t)
	c := newLossCase(t)
	g, loss, grads := c.build(t, true)
	var part *G.Node
	for _, n := range g.ExprGraph.AllNodes() {
		if n.Op() != nil && strings.HasPrefix(n.Op().String(), "SplitHeadsGrad") {
			part = n
			break
		}
	}
	if part == nil {
		t.Fatal("no SplitHeads gradient in the graph")
	}
	prog, err := d.CompileGrad(g.ExprGraph, loss, grads, g.Step) // uploads the weights first
	if err != nil {
		t.Fatal(err)
	}
	if err := prog.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Trim(); err != nil {
		t.Fatal(err)
	}
	before := d.Allocated
	if _, err := d.CompileGrad(g.ExprGraph, loss, append(grads[:len(grads):len(grads)], part), g.Step); err == nil {
		t.Fatal("keeping a part of the fused qkv gradient compiled")
	}
	if err := d.Trim(); err != nil {
		t.Fatal(err)
	}
	if d.Allocated != before {
		t.Errorf("a failed compilation left %d bytes allocated on the device", d.Allocated-before)
	}
}
