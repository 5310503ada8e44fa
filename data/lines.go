package data

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
)

// LineError is a dataset line that cannot be used.
type LineError struct {
	File string
	Line int
	Msg  string
}

func (e *LineError) Error() string { return fmt.Sprintf("data: %s:%d: %s", e.File, e.Line, e.Msg) }

// maxLine bounds one JSONL line (64 MiB: about 8 million token ids).
const maxLine = 64 << 20

// scanLines calls each with the number (from 1) and the space-trimmed text of every line of
// a JSONL source and stops at its first error. A line longer than maxLine is a LineError;
// file names the source in errors.
func scanLines(r io.Reader, file string, each func(line int, text []byte) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxLine)
	line := 0
	for sc.Scan() {
		line++
		if err := each(line, bytes.TrimSpace(sc.Bytes())); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return &LineError{file, line + 1, fmt.Sprintf("line longer than %d MiB", maxLine>>20)}
		}
		return fmt.Errorf("data: %s: %w", file, err)
	}
	return nil
}
