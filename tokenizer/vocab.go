package tokenizer

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"strconv"
)

// VocabFile is the name of the vocabulary in a model directory.
const VocabFile = "qwen.tiktoken"

// VocabError is a bad line of a tiktoken vocabulary file.
type VocabError struct {
	File string
	Line int // 1-based; 0 for the file as a whole
	Msg  string
}

func (e *VocabError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("tokenizer: %s line %d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("tokenizer: %s: %s", e.File, e.Msg)
}

// ParseVocabulary reads a tiktoken rank file: one `base64(token) rank` per line. The ranks
// must be exactly 0..n-1, each token distinct, and every single byte a token (so any text
// can be encoded). It returns the tokens indexed by rank.
func ParseVocabulary(r io.Reader, file string) ([][]byte, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var tokens [][]byte
	seenRank := map[int]int{}
	seenToken := map[string]int{}
	line := 0
	for sc.Scan() {
		line++
		text := bytes.TrimRight(sc.Bytes(), "\r")
		if len(text) == 0 {
			continue
		}
		bad := func(format string, args ...any) error {
			return &VocabError{File: file, Line: line, Msg: fmt.Sprintf(format, args...)}
		}
		sp := bytes.IndexByte(text, ' ')
		if sp < 0 || bytes.IndexByte(text[sp+1:], ' ') >= 0 {
			return nil, bad("expected `base64-token rank`, got %q", clip(text))
		}
		tok, err := base64.StdEncoding.DecodeString(string(text[:sp]))
		if err != nil || len(tok) == 0 {
			return nil, bad("token %q is not non-empty standard base64", clip(text[:sp]))
		}
		rank, err := strconv.Atoi(string(text[sp+1:]))
		if err != nil || rank < 0 {
			return nil, bad("rank %q is not a non-negative integer", clip(text[sp+1:]))
		}
		if prev, dup := seenRank[rank]; dup {
			return nil, bad("rank %d already given on line %d", rank, prev)
		}
		if prev, dup := seenToken[string(tok)]; dup {
			return nil, bad("token %q already given on line %d", tok, prev)
		}
		seenRank[rank], seenToken[string(tok)] = line, line
		for len(tokens) <= rank {
			if len(tokens) > 4<<20 {
				return nil, bad("rank %d is implausibly large", rank)
			}
			tokens = append(tokens, nil)
		}
		tokens[rank] = tok
	}
	if err := sc.Err(); err != nil {
		return nil, &VocabError{File: file, Line: line + 1, Msg: err.Error()}
	}
	if len(tokens) == 0 {
		return nil, &VocabError{File: file, Msg: "no tokens: the file is empty"}
	}
	for rank, tok := range tokens {
		if tok == nil {
			return nil, &VocabError{File: file, Msg: fmt.Sprintf("ranks must run 0..%d without gaps; rank %d is missing", len(tokens)-1, rank)}
		}
	}
	for b := 0; b < 256; b++ {
		if _, ok := seenToken[string([]byte{byte(b)})]; !ok {
			return nil, &VocabError{File: file, Msg: fmt.Sprintf("byte 0x%02x is not a token, so some text could not be encoded", b)}
		}
	}
	return tokens, nil
}

func clip(b []byte) string {
	if len(b) > 40 {
		return string(b[:40]) + "..."
	}
	return string(b)
}
