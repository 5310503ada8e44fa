package checkpoints

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
)

// tempName matches what a killed write leaves behind: WriteAtomic's ".<name>.tmp-<digits>"
// files and a training run's "checkpoint-<step>.tmp" staging directories.
var tempName = regexp.MustCompile(`^(\..+\.tmp-[0-9]+|checkpoint-[0-9]+\.tmp)$`)

// IsTemp reports whether a file or directory name is one of the temporary names this
// module writes before renaming into place.
func IsTemp(name string) bool { return tempName.MatchString(name) }

// RemoveTemps removes the temporary files and staging directories (IsTemp) directly in
// dir and returns their names.
func RemoveTemps(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("checkpoints: %w", err)
	}
	var removed []string
	for _, e := range entries {
		if !IsTemp(e.Name()) {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return removed, fmt.Errorf("checkpoints: removing a temporary file: %w", err)
		}
		removed = append(removed, e.Name())
	}
	return removed, nil
}

// NotEmptyError is an output directory that already holds something.
type NotEmptyError struct {
	Dir     string
	Flag    string   // the flag that named it, e.g. "--out"
	Entries []string // what it holds, sorted
}

func (e *NotEmptyError) Error() string {
	shown := e.Entries
	more := ""
	if len(shown) > 5 {
		shown, more = shown[:5], fmt.Sprintf(" and %d more", len(e.Entries)-5)
	}
	held := strings.Join(shown, ", ") + more
	for _, name := range e.Entries {
		if name == "config.json" {
			held = "a model (" + held + ")"
		}
	}
	return fmt.Sprintf("%s %s already holds %s: choose a new or empty directory (nothing was written)", e.Flag, e.Dir, held)
}

// CheckOutDir makes sure dir can take a command's output: it must be absent, or an empty
// directory. Temporary files a killed write left there (IsTemp) do not count and are
// removed; their names are returned. Anything else is refused with a *NotEmptyError that
// lists it, so nothing the user had is mixed with or overwritten by the new output.
func CheckOutDir(dir, flag string) ([]string, error) {
	st, err := os.Stat(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", flag, dir, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("%s %s is a file, not a directory: choose a new directory (nothing was written)", flag, dir)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", flag, dir, err)
	}
	var held []string
	for _, e := range entries {
		if !IsTemp(e.Name()) {
			name := e.Name()
			if e.IsDir() {
				name += "/"
			}
			held = append(held, name)
		}
	}
	if len(held) > 0 {
		return nil, &NotEmptyError{Dir: dir, Flag: flag, Entries: held}
	}
	return RemoveTemps(dir)
}

// SyncDir flushes dir's entries (a rename or removal in it) to disk. File systems that
// cannot sync a directory are passed over, as is Windows, which cannot open a directory
// for syncing.
func SyncDir(dir string) error {
	if runtime.GOOS == "windows" {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("checkpoints: %w", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOTSUP) {
		return fmt.Errorf("checkpoints: syncing %s: %w", dir, err)
	}
	return nil
}
