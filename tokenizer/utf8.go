package tokenizer

// UTF-8 decoding with replacement characters, as Python's bytes.decode("utf-8", "replace")
// does: each maximal ill-formed subpart (Unicode 3.9, table 3-7) becomes one U+FFFD. Go's
// utf8 package would give one U+FFFD per byte of a truncated sequence instead.

import "unicode/utf8"

// seqLen is the length of the well-formed sequence a lead byte starts, or 0 if b cannot lead.
func seqLen(b byte) int {
	switch {
	case b < 0x80:
		return 1
	case b >= 0xC2 && b <= 0xDF:
		return 2
	case b >= 0xE0 && b <= 0xEF:
		return 3
	case b >= 0xF0 && b <= 0xF4:
		return 4
	}
	return 0
}

// secondOK reports whether c may follow lead byte b.
func secondOK(b, c byte) bool {
	switch b {
	case 0xE0:
		return c >= 0xA0 && c <= 0xBF
	case 0xED:
		return c >= 0x80 && c <= 0x9F
	case 0xF0:
		return c >= 0x90 && c <= 0xBF
	case 0xF4:
		return c >= 0x80 && c <= 0x8F
	}
	return c >= 0x80 && c <= 0xBF
}

// prefix measures the sequence at the start of p (len(p) > 0): n bytes of it are a prefix of
// a well-formed sequence, complete when that sequence is whole. n >= 1 always.
func prefix(p []byte) (n int, complete bool) {
	want := seqLen(p[0])
	if want == 0 {
		return 1, false
	}
	n = 1
	for n < want && n < len(p) {
		c := p[n]
		if n == 1 && !secondOK(p[0], c) || n > 1 && (c < 0x80 || c > 0xBF) {
			return n, false
		}
		n++
	}
	return n, n == want
}

// appendReplacing appends the text of p to dst. With final false, a trailing sequence that
// may still be completed by more bytes is not consumed; the number of bytes used is returned.
func appendReplacing(dst []byte, p []byte, final bool) ([]byte, int) {
	i := 0
	for i < len(p) {
		n, complete := prefix(p[i:])
		switch {
		case complete:
			dst = append(dst, p[i:i+n]...)
		case !final && i+n == len(p):
			return dst, i // wait for the rest of this character
		default:
			dst = utf8.AppendRune(dst, utf8.RuneError)
		}
		i += n
	}
	return dst, i
}

// DecodeUTF8 turns bytes into valid UTF-8 text, one U+FFFD per maximal ill-formed subpart.
func DecodeUTF8(p []byte) string {
	out, _ := appendReplacing(make([]byte, 0, len(p)), p, true)
	return string(out)
}

// StreamDecoder turns a stream of token ids into text, emitting a character only once all
// its bytes have arrived: a character split across tokens never prints half. The
// concatenation of everything it returns, Flush included, equals Decode of all the ids.
type StreamDecoder struct {
	tok     *Tokenizer
	pending []byte
}

// NewStreamDecoder starts a stream.
func (t *Tokenizer) NewStreamDecoder() *StreamDecoder { return &StreamDecoder{tok: t} }

// Add appends a token and returns the text that is now complete (possibly empty).
func (d *StreamDecoder) Add(id int) (string, error) {
	b, err := d.tok.TokenBytes(id)
	if err != nil {
		return "", err
	}
	d.pending = append(d.pending, b...)
	out, used := appendReplacing(nil, d.pending, false)
	d.pending = append(d.pending[:0], d.pending[used:]...)
	return string(out), nil
}

// Flush returns what is left, with a replacement character for an unfinished sequence.
func (d *StreamDecoder) Flush() string {
	out := DecodeUTF8(d.pending)
	d.pending = d.pending[:0]
	return out
}
