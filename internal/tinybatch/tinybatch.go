// Package tinybatch reads the reference batch of tiny-qwen/golden.safetensors (token ids,
// labels and attention mask, with the reference outputs beside them) for tests of several
// packages.
package tinybatch

import (
	"path/filepath"
	"testing"

	"github.com/qwen-tune/qwen-tune/checkpoints"
	"github.com/qwen-tune/qwen-tune/internal/golden"
)

// Batch is the golden batch: [Batch, Seq] ids, labels and mask, and the open reference file.
type Batch struct {
	Batch, Seq int
	IDs        []int32
	Labels     []int32
	Mask       []bool
	File       *checkpoints.Checkpoint
}

// Load opens tiny-qwen/golden.safetensors (failing under CI, skipping elsewhere when it is
// missing) and reads the batch; the file is closed when the test ends.
func Load(t testing.TB) *Batch {
	t.Helper()
	dir := golden.Path(t, "tiny-qwen")
	ck, err := checkpoints.OpenFiles(dir, filepath.Join(dir, "golden.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ck.Close() })
	b := &Batch{File: ck}
	ints := func(name string) []int32 {
		tn, err := ck.Tensor(name)
		if err != nil {
			t.Fatal(err)
		}
		b.Batch, b.Seq = int(tn.Shape[0]), int(tn.Shape[1])
		v, err := tn.Int64()
		if err != nil {
			t.Fatal(err)
		}
		out := make([]int32, len(v))
		for i, x := range v {
			out[i] = int32(x)
		}
		return out
	}
	b.IDs, b.Labels = ints("input_ids"), ints("labels")
	for _, x := range ints("attention_mask") {
		b.Mask = append(b.Mask, x != 0)
	}
	return b
}

// Floats reads a reference tensor as float32.
func (b *Batch) Floats(t testing.TB, name string) []float32 {
	t.Helper()
	v, err := b.File.Float32(name)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// Rows are the real (unpadded) tokens of each row.
func (b *Batch) Rows() [][]int {
	var rows [][]int
	for r := 0; r < b.Batch; r++ {
		var row []int
		for i := 0; i < b.Seq; i++ {
			if b.Mask[r*b.Seq+i] {
				row = append(row, int(b.IDs[r*b.Seq+i]))
			}
		}
		rows = append(rows, row)
	}
	return rows
}
