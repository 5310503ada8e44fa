// Package tfile reads, writes and removes files for tests: an error fails the test at once,
// naming the file.
package tfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
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

// NoneLeft fails the test for each file or directory under dir whose name temp matches: one
// that a writer left behind. A missing dir holds none.
func NoneLeft(t testing.TB, dir string, temp func(name string) bool) {
	t.Helper()
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && temp(d.Name()) {
			t.Errorf("left behind: %s", path)
		}
		return err
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Error(err)
	}
}
