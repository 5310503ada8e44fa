// Package golden finds the reference files that independent implementations produced
// (transformers, PyTorch, OpenAI's tiktoken, AutoGPTQ). They live in ../shared/testdata
// beside the project root and are read in place, never copied into the project. It also
// reads the one that tests of several packages share: tiny-qwen's greedy continuation.
package golden

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// Root returns the shared test-data directory (QWEN_TUNE_TESTDATA overrides it).
func Root() string {
	if d := os.Getenv("QWEN_TUNE_TESTDATA"); d != "" {
		return d
	}
	dir, err := os.Getwd()
	if err != nil {
		return filepath.Join("..", "shared", "testdata")
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, "..", "shared", "testdata")
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return filepath.Join("..", "shared", "testdata")
		}
		dir = parent
	}
}

// Path returns the path of a reference file, relative to the test-data root. When it is
// missing the test fails under CI (CI set) and is skipped elsewhere, saying what is missing.
func Path(t testing.TB, rel string) string {
	t.Helper()
	p := filepath.Join(Root(), rel)
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("reference file %s is missing (%v): CI must run with ../shared/testdata beside the project", p, err)
		} else {
			t.Skipf("skipping: reference file %s is missing; put the shared test data at ../shared/testdata (or set QWEN_TUNE_TESTDATA) to run this test", p)
		}
	}
	return p
}

// Greedy is tiny-qwen/golden_greedy.json: the tokens transformers decodes greedily, with its
// KV cache, after the prompt.
type Greedy struct {
	Prompt       []int `json:"prompt"`
	Continuation []int `json:"greedy_continuation"`
}

// ReadGreedy reads tiny-qwen/golden_greedy.json (a missing file is handled as by Path).
func ReadGreedy(t testing.TB) Greedy {
	t.Helper()
	p := Path(t, "tiny-qwen/golden_greedy.json")
	var g Greedy
	b, err := os.ReadFile(p)
	if err == nil {
		err = json.Unmarshal(b, &g)
	}
	if err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	return g
}
