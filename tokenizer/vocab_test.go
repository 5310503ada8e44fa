package tokenizer

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
)

// byteVocab is the 256 single bytes at ranks 0..255.
func byteVocab() string {
	var sb strings.Builder
	for b := 0; b < 256; b++ {
		fmt.Fprintf(&sb, "%s %d\n", base64.StdEncoding.EncodeToString([]byte{byte(b)}), b)
	}
	return sb.String()
}

func TestVocabularyErrors(t *testing.T) {
	base := byteVocab()
	cases := []struct{ text, want string }{
		{base + "YWI=\n", "line 257: expected `base64-token rank`"},
		{base + "YWI= x\n", "line 257: rank \"x\" is not a non-negative integer"},
		{base + "!!! 256\n", "line 257: token \"!!!\" is not non-empty standard base64"},
		{base + "YWI= 3\n", "line 257: rank 3 already given on line 4"},
		{base + "AA== 256\n", "line 257: token \"\\x00\" already given on line 1"},
		{base + "YWI= 300\n", "rank 256 is missing"},
		{base + "YWI= 256 7\n", "line 257: expected"},
		{strings.Replace(base, "AA== 0\n", "", 1) + "YWI= 0\n", "byte 0x00 is not a token"},
		{"", "no tokens"},
	}
	for _, c := range cases {
		_, err := ParseVocabulary(strings.NewReader(c.text), "v.tiktoken")
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "v.tiktoken") {
			t.Errorf("error %v, want %q", err, c.want)
		}
	}
	tokens, err := ParseVocabulary(strings.NewReader(base+"YWI= 256\r\n\n"), "ok")
	if err != nil || len(tokens) != 257 || string(tokens[256]) != "ab" {
		t.Fatalf("valid vocabulary: %v", err)
	}
}

func FuzzParseVocabulary(f *testing.F) {
	base := byteVocab()
	f.Add([]byte(base))
	f.Add([]byte(base + "YWI= 256\n"))
	f.Add([]byte("AA== 0\nAQ== 1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		tokens, err := ParseVocabulary(bytes.NewReader(data), "fuzz")
		if err != nil {
			if !strings.Contains(err.Error(), "fuzz") {
				t.Fatalf("error without the file name: %v", err)
			}
			return
		}
		seen := map[string]bool{}
		for _, tok := range tokens {
			if len(tok) == 0 || seen[string(tok)] {
				t.Fatalf("accepted an empty or repeated token %q", tok)
			}
			seen[string(tok)] = true
		}
		for b := 0; b < 256; b++ {
			if !seen[string([]byte{byte(b)})] {
				t.Fatalf("accepted a vocabulary without byte %d", b)
			}
		}
	})
}
