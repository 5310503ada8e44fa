package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestOutputDirectoriesMustBeEmpty: every command that writes a directory refuses one that
// holds anything (an unrelated folder, a half-written model), names what it holds and
// leaves it as it was; an empty directory is used.
func TestOutputDirectoriesMustBeEmpty(t *testing.T) {
	dir, tmp, chats, run := tinyRun(t, "--steps", "1", "--lora-r", "4")
	unrelated := filepath.Join(tmp, "photos")
	os.MkdirAll(unrelated, 0o755)
	writeFile(t, filepath.Join(unrelated, "holiday.jpg"), "jpeg")
	// A quantize run killed after its first shard: weights but no config.json yet.
	half := filepath.Join(tmp, "half-int4")
	os.MkdirAll(half, 0o755)
	writeFile(t, filepath.Join(half, "model.safetensors"), "partial")
	text := writeFile(t, filepath.Join(tmp, "calib.txt"), strings.Repeat("The quick brown fox. ", 40))
	for _, target := range []struct{ dir, holds string }{{unrelated, "holiday.jpg"}, {half, "model.safetensors"}} {
		for _, args := range [][]string{
			{"init", "--tiny", "--out", target.dir},
			{"merge", "--model", dir, "--adapter", run, "--out", target.dir},
			{"quantize", "--model", dir, "--text", text, "--out", target.dir, "--group-size", "16", "--nsamples", "2", "--seq-len", "32"},
			{"lora", "--model", dir, "--data", chats, "--out", target.dir, "--steps", "1"},
		} {
			_, errs, st := qt(t, "", args...)
			if st != 1 || !strings.Contains(errs, "--out "+target.dir+" already holds "+target.holds) {
				t.Errorf("%s into %s: status %d, %q", args[0], target.dir, st, errs)
			}
			if entries, _ := os.ReadDir(target.dir); len(entries) != 1 {
				t.Errorf("%s changed %s: %v", args[0], target.dir, entries)
			}
		}
	}
	// An empty directory (with the debris of a killed write) is used.
	empty := filepath.Join(tmp, "empty")
	os.MkdirAll(empty, 0o755)
	writeFile(t, filepath.Join(empty, ".model.safetensors.tmp-1234"), "half")
	if _, errs, st := qt(t, "", "merge", "--model", dir, "--adapter", run, "--out", empty); st != 0 {
		t.Fatalf("merge into an empty directory: %s", errs)
	}
	if _, err := os.Stat(filepath.Join(empty, ".model.safetensors.tmp-1234")); err == nil {
		t.Error("the temporary file of a killed write was left")
	}
	if o, errs, st := qt(t, "", "inspect", empty); st != 0 {
		t.Fatalf("inspect of the merged model: %s %s", o, errs)
	}
}
