package golden

import (
	"fmt"
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
