package tokenizer

// A hand-written scanner for Qwen's pre-tokenisation pattern,
//
//	(?i:'s|'t|'re|'ve|'m|'ll|'d)      1. English contractions
//	|[^\r\n\p{L}\p{N}]?\p{L}+         2. a word, with one leading non-letter (" the", "(x")
//	|\p{N}                            3. one digit
//	| ?[^\s\p{L}\p{N}]+[\r\n]*        4. punctuation, optional leading space, trailing newlines
//	|\s*[\r\n]+                       5. whitespace up to its last newline
//	|\s+(?!\S)                        6. whitespace, leaving the last one to the next word
//	|\s+                              7. any other whitespace
//
// giving the same pieces a backtracking engine does, in one pass (each position is examined
// a bounded number of times, so hostile input such as a megabyte of spaces is linear).
// \s is Unicode White_Space, \p{L} letters, \p{N} numbers; a byte that is not valid UTF-8
// counts as a character of class 4.

import (
	"unicode"
	"unicode/utf8"
)

// Pattern is the regular expression the scanner implements.
const Pattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`

type class uint8

const (
	clsOther class = iota // not whitespace, letter or number (also invalid bytes)
	clsLetter
	clsNumber
	clsSpace
)

// at decodes the character at i: its class and width. i must be < len(s).
func at(s string, i int) (rune, class, int) {
	c := s[i]
	if c < utf8.RuneSelf {
		switch {
		case 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z':
			return rune(c), clsLetter, 1
		case '0' <= c && c <= '9':
			return rune(c), clsNumber, 1
		case c == ' ' || '\t' <= c && c <= '\r':
			return rune(c), clsSpace, 1
		}
		return rune(c), clsOther, 1
	}
	r, w := utf8.DecodeRuneInString(s[i:])
	switch {
	case r == utf8.RuneError && w == 1:
		return r, clsOther, 1
	case unicode.IsLetter(r):
		return r, clsLetter, w
	case unicode.IsNumber(r):
		return r, clsNumber, w
	case unicode.IsSpace(r): // Unicode White_Space
		return r, clsSpace, w
	}
	return r, clsOther, w
}

// foldsTo reports whether r matches the lower-case ASCII letter c case-insensitively
// (simple case folding: 'ſ' matches 's').
func foldsTo(r rune, c byte) bool {
	return r == rune(c) || r == rune(c-'a'+'A') || (c == 's' && r == 'ſ')
}

// nextPiece returns the end of the piece that starts at i < len(s).
func nextPiece(s string, i int) int {
	r0, c0, w0 := at(s, i)
	// 1. contractions
	if r0 == '\'' && i+1 < len(s) {
		r1, _, w1 := at(s, i+1)
		switch {
		case foldsTo(r1, 's') || foldsTo(r1, 't') || foldsTo(r1, 'm') || foldsTo(r1, 'd'):
			return i + 1 + w1
		case foldsTo(r1, 'r') || foldsTo(r1, 'v') || foldsTo(r1, 'l'):
			if j := i + 1 + w1; j < len(s) {
				r2, _, w2 := at(s, j)
				if (foldsTo(r1, 'r') || foldsTo(r1, 'v')) && foldsTo(r2, 'e') || foldsTo(r1, 'l') && foldsTo(r2, 'l') {
					return j + w2
				}
			}
		}
	}
	// 2. a word, optionally led by one character that is not \r, \n, a letter or a number
	if c0 == clsLetter {
		return letters(s, i)
	}
	if c0 != clsNumber && r0 != '\r' && r0 != '\n' && i+w0 < len(s) {
		if _, c1, _ := at(s, i+w0); c1 == clsLetter {
			return letters(s, i+w0)
		}
	}
	// 3. one number
	if c0 == clsNumber {
		return i + w0
	}
	// 4. punctuation with an optional leading space and trailing newlines
	j := i
	if r0 == ' ' && i+1 < len(s) {
		if _, c1, _ := at(s, i+1); c1 == clsOther {
			j = i + 1
		}
	}
	if _, c, _ := at(s, j); c == clsOther {
		for j < len(s) {
			_, c, w := at(s, j)
			if c != clsOther {
				break
			}
			j += w
		}
		for j < len(s) && (s[j] == '\r' || s[j] == '\n') {
			j++
		}
		return j
	}
	// 5-7. whitespace: find the run and its last newline
	end, lastNL := i, -1
	runes := 0
	for end < len(s) {
		r, c, w := at(s, end)
		if c != clsSpace {
			break
		}
		if r == '\r' || r == '\n' {
			lastNL = end
		}
		end += w
		runes++
	}
	switch {
	case lastNL >= 0: // 5. \s*[\r\n]+
		return lastNL + 1
	case end == len(s) || runes == 1: // 6 at the end of text, or 7 for a single character
		return end
	}
	// 6. \s+(?!\S): all but the last whitespace character
	_, w := utf8.DecodeLastRuneInString(s[:end])
	return end - w
}

func letters(s string, j int) int {
	for j < len(s) {
		_, c, w := at(s, j)
		if c != clsLetter {
			break
		}
		j += w
	}
	return j
}
