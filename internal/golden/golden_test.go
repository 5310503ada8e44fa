package golden

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// recorder captures how Path ends a test.
type recorder struct {
	testing.TB
	fatal, skip string
}

func (r *recorder) Helper()                        {}
func (r *recorder) Fatalf(format string, a ...any) { r.fatal = fmt.Sprintf(format, a...) }
func (r *recorder) Skipf(format string, a ...any)  { r.skip = fmt.Sprintf(format, a...) }

func TestMissingFileFailsUnderCIAndSkipsElsewhere(t *testing.T) {
	t.Setenv("QWEN_TUNE_TESTDATA", t.TempDir())
	t.Setenv("CI", "true")
	r := &recorder{TB: t}
	Path(r, "tokenizer/golden.json")
	if r.fatal == "" || r.skip != "" {
		t.Fatalf("under CI a missing file must fail the test: fatal %q, skip %q", r.fatal, r.skip)
	}
	t.Setenv("CI", "")
	r = &recorder{TB: t}
	Path(r, "tokenizer/golden.json")
	if r.skip == "" || r.fatal != "" {
		t.Fatalf("outside CI a missing file must skip: fatal %q, skip %q", r.fatal, r.skip)
	}
}

// TestSkipsAreCounted: every test skipped for a missing reference file is counted, and the
// summary line says how many and what is missing.
func TestSkipsAreCounted(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "testdata")
	t.Setenv("QWEN_TUNE_TESTDATA", missing)
	t.Setenv("CI", "")
	before := Skipped()
	for range 3 {
		Path(&recorder{TB: t}, "tokenizer/golden.json")
	}
	if n := Skipped() - before; n != 3 {
		t.Fatalf("%d skips counted, want 3", n)
	}
	if got, want := Summary(3), "3 golden tests skipped: "+missing+" is missing"; !strings.HasPrefix(got, want) {
		t.Errorf("summary %q, want it to start with %q", got, want)
	}
	if err := os.MkdirAll(missing, 0o755); err != nil {
		t.Fatal(err)
	}
	if got := Summary(1); !strings.HasPrefix(got, "1 golden test skipped: reference files are missing from "+missing) {
		t.Errorf("summary with the folder present: %q", got)
	}
}
