package model

import "testing"

// TestCheckpointMarks: a training graph marks every block's input and the last block's
// output (layers + 1 marks); inference and evaluation graphs, which the GPU executor
// compiles without recomputation, have none.
func TestCheckpointMarks(t *testing.T) {
	m, err := RandomModel(DefaultTiny())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for _, c := range []struct {
		mode Mode
		last bool
		want int
	}{{Training, false, len(m.Blocks) + 1}, {Evaluation, false, 0}, {Inference, false, 0}, {Inference, true, 0}} {
		g := NewGraph(m, 1, 8, c.mode, c.last)
		if _, err := m.Forward(g); err != nil {
			t.Fatal(err)
		}
		marks := 0
		for _, n := range g.AllNodes() {
			if n.Op() != nil && n.Op().String() == "Checkpoint" {
				marks++
			}
		}
		if marks != c.want {
			t.Errorf("mode %d (last %v): %d Checkpoint marks, want %d", c.mode, c.last, marks, c.want)
		}
	}
}
