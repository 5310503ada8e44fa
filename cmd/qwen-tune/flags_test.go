package main

import (
	"strings"
	"testing"
)

// TestSamplingFlagErrors: a bad sampling flag is named as the flag, not as a key of
// generation_config.json (which is fine).
func TestSamplingFlagErrors(t *testing.T) {
	dir := tinyModel(t)
	for _, c := range []struct{ flag, value, want string }{
		{"--top-p", "0", "--top-p 0: must be in (0, 1]"},
		{"--top-p", "1.5", "--top-p 1.5: must be in (0, 1]"},
		{"--temperature", "-1", "--temperature -1: must be >= 0"},
		{"--top-k", "-2", "--top-k -2: must be >= 0"},
		{"--repetition-penalty", "0", "--repetition-penalty 0: must be > 0"},
		{"--max-new-tokens", "-1", "--max-new-tokens -1: must be >= 0"},
	} {
		for _, command := range []string{"chat", "generate"} {
			_, errs, st := qt(t, "", command, "--model", dir, "--prompt", "hi", c.flag, c.value)
			if st != 1 || !strings.Contains(errs, c.want) || strings.Contains(errs, "generation_config.json") {
				t.Errorf("%s %s %s: status %d, %q; want %q", command, c.flag, c.value, st, errs, c.want)
			}
		}
	}
}
