package model

import (
	"bytes"
	"path/filepath"
	"testing"

	"github.com/qwen-tune/qwen-tune/checkpoints"
	"github.com/qwen-tune/qwen-tune/internal/tfile"
	"github.com/qwen-tune/qwen-tune/tokenizer"
)

func TestWriteTinyIsAValidReproducibleModel(t *testing.T) {
	o := DefaultTiny()
	o.VocabRanks = 1000
	a, b := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	cfg, err := WriteTiny(a, o)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := WriteTiny(b, o); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"config.json", "generation_config.json", "model.safetensors", tokenizer.VocabFile} {
		x, y := tfile.Read(t, filepath.Join(a, f)), tfile.Read(t, filepath.Join(b, f))
		if len(x) == 0 || !bytes.Equal(x, y) {
			t.Errorf("%s differs between two runs with the same seed", f)
		}
	}
	read, gen, err := checkpoints.ReadModelConfigs(a)
	if err != nil {
		t.Fatal(err)
	}
	if read.VocabSize != cfg.VocabSize || read.VocabSize != 1280 || read.VocabSize < 1000+tokenizer.NumSpecial {
		t.Errorf("vocab_size %d", read.VocabSize)
	}
	ck, err := checkpoints.OpenDir(a)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	if err := checkpoints.CheckTensors(read, nil, ck); err != nil {
		t.Fatal(err)
	}
	norm, err := ck.Float32(checkpoints.FinalNorm)
	if err != nil || norm[0] != 1 {
		t.Errorf("ln_f starts at %v (%v), want 1", norm[:1], err)
	}
	tok, err := tokenizer.Load(a)
	if err != nil {
		t.Fatal(err)
	}
	if tok.EndOfTextID() != 1000 || gen.EOSTokenID != 1000 || gen.PadTokenID != 1000 || tok.Size() > read.VocabSize {
		t.Errorf("<|endoftext|> is %d, generation config says %d; %d ids for %d rows", tok.EndOfTextID(), gen.EOSTokenID, tok.Size(), read.VocabSize)
	}
	o.Seed++
	c := filepath.Join(t.TempDir(), "c")
	if _, err := WriteTiny(c, o); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(tfile.Read(t, filepath.Join(a, "model.safetensors")), tfile.Read(t, filepath.Join(c, "model.safetensors"))) {
		t.Error("another seed gave the same weights")
	}
	if _, err := WriteTiny(a, o); err == nil {
		t.Error("an existing model was overwritten")
	}
	o.Heads = 3
	if _, err := WriteTiny(filepath.Join(t.TempDir(), "d"), o); err == nil {
		t.Error("hidden 64 with 3 heads was accepted")
	}
}
