package checkpoints

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckOutDir: an output directory must be absent or empty; a killed write's temporary
// files do not count and are removed; anything else is refused and listed.
func TestCheckOutDir(t *testing.T) {
	tmp := t.TempDir()
	if removed, err := CheckOutDir(filepath.Join(tmp, "new"), "--out"); err != nil || removed != nil {
		t.Fatalf("absent directory: %v %v", removed, err)
	}
	if _, err := CheckOutDir(tmp, "--out"); err != nil {
		t.Fatalf("empty directory: %v", err)
	}
	debris := []string{".config.json.tmp-123456", "checkpoint-4.tmp"}
	os.WriteFile(filepath.Join(tmp, debris[0]), []byte("half"), 0o644)
	os.MkdirAll(filepath.Join(tmp, debris[1], "x"), 0o755)
	removed, err := CheckOutDir(tmp, "--out")
	if err != nil || strings.Join(removed, ",") != strings.Join(debris, ",") {
		t.Fatalf("debris only: removed %v, %v", removed, err)
	}
	if entries, _ := os.ReadDir(tmp); len(entries) != 0 {
		t.Fatalf("debris left: %v", entries)
	}

	for _, name := range []string{"notes.txt", "a", "b", "c", "d", "e"} {
		os.WriteFile(filepath.Join(tmp, name), nil, 0o644)
	}
	os.Mkdir(filepath.Join(tmp, "photos"), 0o755)
	os.WriteFile(filepath.Join(tmp, debris[0]), []byte("half"), 0o644)
	_, err = CheckOutDir(tmp, "--out")
	var ne *NotEmptyError
	if !errors.As(err, &ne) || len(ne.Entries) != 7 || !strings.Contains(err.Error(), "--out "+tmp+" already holds a, b, c, d, e and 2 more: choose a new or empty directory") {
		t.Fatalf("non-empty directory: %v", err)
	}
	if _, err := os.Stat(filepath.Join(tmp, debris[0])); err != nil {
		t.Fatal("a refused directory was changed")
	}
	if _, err := CheckOutDir(filepath.Join(tmp, "notes.txt"), "--out"); err == nil || !strings.Contains(err.Error(), "is a file") {
		t.Fatalf("a file as --out: %v", err)
	}
	for name, want := range map[string]bool{".x.tmp-1": true, "x.tmp-1": false, ".x.tmp-": false, "checkpoint-1.tmp": true, "checkpoint-x.tmp": false, "foo.tmp": false} {
		if IsTemp(name) != want {
			t.Errorf("IsTemp(%q) = %v", name, !want)
		}
	}
}
