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

// bom is the UTF-8 byte-order mark some editors put at the start of a file.
var bom = []byte("\xef\xbb\xbf")

// scanLines calls each with the number (from 1), the file offset and the space-trimmed
// text of every line of a JSONL source and stops at its first error. A UTF-8 byte-order
// mark at the start is skipped; the caller checks the encoding (checkText). A line longer
// than maxLine is a LineError; file names the source in errors.
func scanLines(r io.Reader, file string, each func(line int, offset int64, text []byte) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxLine)
	sc.Split(scanRawLines)
	line, offset := 0, int64(0)
	for sc.Scan() {
		line++
		raw := sc.Bytes()
		start := offset
		offset += int64(len(raw))
		if line == 1 && bytes.HasPrefix(raw, bom) {
			raw, start = raw[len(bom):], start+int64(len(bom))
		}
		text := bytes.TrimLeft(raw, " \t\r\n\v\f")
		start += int64(len(raw) - len(text))
		if err := each(line, start, bytes.TrimSpace(text)); err != nil {
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

// scanRawLines splits at "\n" and keeps it, so that offsets add up to the file's bytes.
func scanRawLines(b []byte, atEOF bool) (int, []byte, error) {
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		return i + 1, b[:i+1], nil
	}
	if atEOF && len(b) > 0 {
		return len(b), b, nil
	}
	return 0, nil, nil
}

// checkUTF8 returns nil when text is valid UTF-8, and otherwise says where the first
// invalid byte is: offset is text's position in the file.
func checkUTF8(text []byte, offset int64) error {
	i := firstInvalid(text)
	if i < 0 {
		return nil
	}
	return fmt.Errorf("invalid UTF-8 (byte 0x%02x at byte offset %d of the file): training text must be UTF-8; re-save the file as UTF-8 or fix that byte (it is not replaced silently)", text[i], offset+i)
}

// checkText is checkUTF8 and also refuses a JSON escape of a lone UTF-16 surrogate
// ("\ud800" without its pair), which decoding would replace with U+FFFD.
func checkText(text []byte, offset int64) error {
	if err := checkUTF8(text, offset); err != nil {
		return err
	}
	for i := 0; i+1 < len(text); i++ {
		if text[i] != '\\' {
			continue
		}
		i++ // the escaped character; an escaped backslash is skipped whole
		if text[i] != 'u' {
			continue
		}
		r, ok := hex4(text[i+1:])
		if !ok || r < 0xd800 || r > 0xdfff {
			continue
		}
		if lo, ok := hex4(text[min(i+7, len(text)):]); r < 0xdc00 && ok && i+6 < len(text) && text[i+5] == '\\' && text[i+6] == 'u' && lo >= 0xdc00 && lo <= 0xdfff {
			i += 10 // a high surrogate with its low one: a character outside the BMP
			continue
		}
		return fmt.Errorf("the escape %s at byte offset %d is half of a UTF-16 surrogate pair and stands for no character; training text must be valid Unicode, so fix or remove it (it is not replaced silently)", text[i-1:i+5], offset+int64(i-1))
	}
	return nil
}

// hex4 reads four hex digits.
func hex4(b []byte) (rune, bool) {
	if len(b) < 4 {
		return 0, false
	}
	var r rune
	for _, c := range b[:4] {
		switch {
		case '0' <= c && c <= '9':
			r = r<<4 | rune(c-'0')
		case 'a' <= c && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case 'A' <= c && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}

// checkEncoding refuses files in UTF-16 or UTF-32, which a byte-order mark gives away.
func checkEncoding(b []byte, file string) error {
	for _, m := range []struct {
		mark, name string
	}{{"\x00\x00\xfe\xff", "UTF-32"}, {"\xff\xfe\x00\x00", "UTF-32"}, {"\xfe\xff", "UTF-16"}, {"\xff\xfe", "UTF-16"}} {
		if bytes.HasPrefix(b, []byte(m.mark)) {
			return &LineError{file, 1, fmt.Sprintf("the file is %s (it starts with a %s byte-order mark); convert it to UTF-8, e.g. iconv -f %s -t UTF-8", m.name, m.name, m.name)}
		}
	}
	return nil
}
