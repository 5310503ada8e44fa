package tokenizer

import (
	"slices"
	"strings"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// cgj is U+034F COMBINING GRAPHEME JOINER, which golang.org/x/text inserts into long runs of
// combining marks.
const cgj = "\u034f"

// NFC normalises s as Python's unicodedata.normalize("NFC", s) does (Qwen's tokenizer calls
// it before encoding). golang.org/x/text's norm.NFC also applies the Stream-Safe Text Format:
// after 30 consecutive non-starters it inserts U+034F and reorders and composes the two sides
// apart. Python inserts nothing and treats a run of any length as one. Text without such runs
// (everything but contrived input) takes x/text's result; otherwise the canonical
// decomposition, ordering and composition of Unicode's NFC are applied to the whole text.
func NFC(s string) string {
	out := norm.NFC.String(s)
	if strings.Count(out, cgj) == strings.Count(s, cgj) {
		return out
	}
	return unboundedNFC(s)
}

// unboundedNFC is NFC without a limit on runs of non-starters. Bytes that are not UTF-8 are
// kept as they are and end the run before them, as x/text treats them.
func unboundedNFC(s string) string {
	var b strings.Builder
	var run []rune
	for len(s) > 0 {
		r, n := utf8.DecodeRuneInString(s)
		if r == utf8.RuneError && n == 1 {
			b.WriteString(string(compose(reorder(run))))
			run = run[:0]
			b.WriteByte(s[0])
		} else {
			run = append(run, []rune(norm.NFD.String(s[:n]))...) // one rune's decomposition is short
		}
		s = s[n:]
	}
	b.WriteString(string(compose(reorder(run))))
	return b.String()
}

// ccc is a rune's canonical combining class.
func ccc(r rune) uint8 { return norm.NFD.PropertiesString(string(r)).CCC() }

// reorder sorts every run of non-starters by combining class, keeping the order of equal
// classes (Unicode's canonical ordering).
func reorder(rs []rune) []rune {
	for i := 0; i < len(rs); {
		if ccc(rs[i]) == 0 {
			i++
			continue
		}
		j := i
		for j < len(rs) && ccc(rs[j]) != 0 {
			j++
		}
		slices.SortStableFunc(rs[i:j], func(a, b rune) int { return int(ccc(a)) - int(ccc(b)) })
		i = j
	}
	return rs
}

// compose is Unicode's canonical composition of decomposed, ordered text: a character joins
// the last starter when nothing between them blocks it (a starter, or a mark of the same or a
// higher class) and the pair has a primary composite.
func compose(rs []rune) []rune {
	out := rs[:0:0]
	starter := -1
	var last uint8 // class of the last character kept after the starter
	for _, r := range rs {
		c := ccc(r)
		adjacent := starter == len(out)-1
		if starter >= 0 && (adjacent || last != 0 && last < c) {
			if p, ok := composite(out[starter], r); ok {
				out[starter] = p
				continue
			}
		}
		if c == 0 {
			starter = len(out)
		}
		last = c
		out = append(out, r)
	}
	return out
}

// composite is the primary composite of a starter and a following character, if there is one
// (composition exclusions included, as norm.NFC applies them to the pair).
func composite(a, b rune) (rune, bool) {
	pair := string([]rune{a, b})
	p := norm.NFC.String(pair)
	if r, n := utf8.DecodeRuneInString(p); n == len(p) && r != utf8.RuneError {
		return r, true
	}
	return 0, false
}
