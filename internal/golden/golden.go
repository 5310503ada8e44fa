// Package golden finds the reference files that independent implementations produced
// (transformers, PyTorch, OpenAI's tiktoken, AutoGPTQ). They live in ../shared/testdata
// beside the project root and are read in place, never copied into the project. It also
// reads the one that tests of several packages share: tiny-qwen's greedy continuation.
package golden

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
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
			skips.Add(1)
			t.Skipf("skipping: reference file %s is missing; put the shared test data at ../shared/testdata (or set QWEN_TUNE_TESTDATA) to run this test", p)
		}
	}
	return p
}

// skips counts the tests of this binary skipped for a missing reference file.
var skips atomic.Int64

// Skipped is how many tests Path has skipped so far.
func Skipped() int64 { return skips.Load() }

// Summary is the line that says n tests were skipped and what is missing.
func Summary(n int64) string {
	tests := "tests"
	if n == 1 {
		tests = "test"
	}
	root := Root()
	if _, err := os.Stat(root); err != nil {
		return fmt.Sprintf("%d golden %s skipped: %s is missing (put the shared test data there or set QWEN_TUNE_TESTDATA)", n, tests, root)
	}
	return fmt.Sprintf("%d golden %s skipped: reference files are missing from %s", n, tests, root)
}

// Main runs a package's tests (call it from TestMain) and then, when some were skipped for
// missing reference files, says how many in one line. go test shows a passing package's
// output only under -v, so the line goes to the terminal (/dev/tty) when there is one, and
// to stdout otherwise (shown by -v, by a failure, or when the test binary runs alone).
func Main(m *testing.M) {
	code := m.Run()
	if n := skips.Load(); n > 0 {
		line := Summary(n)
		if pkg := strings.TrimSuffix(filepath.Base(os.Args[0]), ".test"); pkg != "" {
			line = pkg + ": " + line
		}
		if tty, err := os.OpenFile("/dev/tty", os.O_WRONLY, 0); err == nil {
			fmt.Fprintln(tty, line)
			tty.Close()
		} else {
			fmt.Println(line)
		}
	}
	os.Exit(code)
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
