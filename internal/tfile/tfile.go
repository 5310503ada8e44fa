// Package tfile reads, writes and removes files for tests: an error fails the test at once,
// naming the file.
package tfile

import (
	"errors"
	"io/fs"
	"os"
	"testing"
)

// Read returns the contents of path.
func Read(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Write writes data to path (mode 0644).
func Write(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// Remove removes path and anything below it; a path that is already gone is fine.
func Remove(t testing.TB, path string) {
	t.Helper()
	if err := os.RemoveAll(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
}
