package model

import (
	"slices"
	"testing"

	"github.com/qwen-tune/qwen-tune/checkpoints"
)

// TestProjectionsFollowTheTable: every slot Block.Projections returns holds the checkpoint
// tensor its table row names, with the row's shape, so the block's fields and
// checkpoints.BlockLinears cannot drift apart.
func TestProjectionsFollowTheTable(t *testing.T) {
	m, err := RandomModel(TinyOptions{Hidden: 16, Heads: 2, Layers: 2, MLPWidth: 24, SeqLength: 32, VocabRanks: 300, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	slots := m.Projections()
	if len(slots) != 2*len(checkpoints.BlockLinears) {
		t.Fatalf("%d slots for 2 blocks of %d linears", len(slots), len(checkpoints.BlockLinears))
	}
	var names []string
	for _, s := range slots {
		d, ok := (*s.P).(*Dense)
		if !ok {
			t.Fatalf("%s is a %T", s.Name, *s.P)
		}
		out, in := s.Shape(m.Config)
		if d.Weight.Name != s.Name+".weight" || !slices.Equal(d.Weight.Value.Shape(), []int{out, in}) {
			t.Errorf("slot %s holds %s %v, want %s.weight [%d, %d]", s.Name, d.Weight.Name, d.Weight.Value.Shape(), s.Name, out, in)
		}
		if (d.Bias != nil) != s.Bias {
			t.Errorf("slot %s: bias present %v, the table says %v", s.Name, d.Bias != nil, s.Bias)
		}
		names = append(names, d.Weight.Name)
	}
	// The model's forward reads the same fields: each holds the layer its comment names.
	b := m.Blocks[1]
	for _, f := range []struct {
		p    Projection
		want string
	}{{b.QKV, "attn.c_attn"}, {b.Out, "attn.c_proj"}, {b.Up, "mlp.w1"}, {b.Gate, "mlp.w2"}, {b.Down, "mlp.c_proj"}} {
		if got := f.p.(*Dense).Weight.Name; got != "transformer.h.1."+f.want+".weight" {
			t.Errorf("the block field for %s holds %s", f.want, got)
		}
	}
	// Params lists every checkpoint tensor once, in the table's order.
	var want, got []string
	for _, s := range checkpoints.ModelTensors(m.Config, nil) {
		want = append(want, s.Name)
	}
	for _, p := range m.Params() {
		got = append(got, p.Name)
	}
	if !slices.Equal(got, want) {
		t.Errorf("Params order\n%v\nwant\n%v", got, want)
	}
}
