package main

import (
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
