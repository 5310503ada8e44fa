package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qwen-tune/qwen-tune/internal/golden"
	"github.com/qwen-tune/qwen-tune/internal/tfile"
)

func TestCorruptCheckpointIsNamed(t *testing.T) {
	dir := tinyModel(t)
	path := filepath.Join(dir, "model.safetensors")
	b := tfile.Read(t, path)
	tfile.Write(t, path, b[:len(b)/2])
	_, errs, st := qt(t, "", "inspect", dir)
	if st != 1 || !strings.Contains(errs, "model.safetensors") || !strings.Contains(errs, "truncated") {
		t.Fatalf("truncated shard: status %d, %q", st, errs)
	}
}

func TestInspectGoldenDirectories(t *testing.T) {
	tiny := filepath.Dir(golden.Path(t, "tiny-qwen/config.json"))
	out, errs, st := qt(t, "", "inspect", tiny)
	if st != 0 || !strings.Contains(out, "19 in 2 file(s)") {
		t.Fatalf("inspect tiny-qwen: %s %s", out, errs)
	}
	// The real Qwen-7B directory holds the index but not the 15 GB of shards.
	_, errs, st = qt(t, "", "inspect", filepath.Dir(golden.Path(t, "qwen-7b/config.json")))
	if st != 1 || !strings.Contains(errs, "model-00001-of-00008.safetensors, which is missing") {
		t.Fatalf("inspect qwen-7b without shards: %d %q", st, errs)
	}
}

// TestInspectCheckpointAndTokens: inspect lists an adapter's trained special-token rows, and
// validates every file of a training checkpoint, the optimizer state included.
func TestInspectCheckpointAndTokens(t *testing.T) {
	_, _, _, run := tinyRun(t, "--steps", "2", "--lora-r", "4", "--train-special-tokens")
	o, errs, st := qt(t, "", "inspect", run)
	if st != 0 || !strings.Contains(o, "  tokens     lm_head: 208 trained rows, ids 4096-4303") || !strings.Contains(o, "  tokens     wte: 208 trained rows") {
		t.Fatalf("inspect adapter: %d %s %s", st, o, errs)
	}
	ck := filepath.Join(run, "checkpoint-2")
	o, errs, st = qt(t, "", "inspect", ck)
	if st != 0 || !strings.Contains(o, "LoRA training checkpoint") || !strings.Contains(o, "step 2 of 2 (AdamW step 2); 22 trained tensors") || !strings.Contains(o, "ids 4096-4303") {
		t.Fatalf("inspect checkpoint: %d %s %s", st, o, errs)
	}
	opt := filepath.Join(ck, "optimizer.safetensors")
	b, _ := os.ReadFile(opt)
	os.WriteFile(opt, b[:len(b)-4], 0o644)
	if _, errs, st := qt(t, "", "inspect", ck); st != 1 || !strings.Contains(errs, "optimizer.safetensors") {
		t.Fatalf("truncated optimizer state: %d %s", st, errs)
	}
	os.WriteFile(opt, b, 0o644)
	writeFile(t, filepath.Join(ck, ".trainer_state.json.tmp-42"), "{")
	if _, errs, st := qt(t, "", "inspect", ck); st != 1 || !strings.Contains(errs, "holds .trainer_state.json.tmp-42") {
		t.Fatalf("an unfinished file in the checkpoint: %d %s", st, errs)
	}
}
