package tokenizer

import (
	"os"
	"strings"
	"testing"
)

// benchText is 100 copies of testdata/mixed.txt: English prose, Chinese, Go, Python, SQL
// and JSON (about 180 KB). tiktoken_peer.mjs encodes the same text with OpenAI's tiktoken.
func benchText(b *testing.B) string {
	raw, err := os.ReadFile("testdata/mixed.txt")
	if err != nil {
		b.Fatal(err)
	}
	return strings.Repeat(string(raw), 100)
}

// BenchmarkEncodeQwen measures throughput with the real Qwen-7B vocabulary.
func BenchmarkEncodeQwen(b *testing.B) {
	tok, text := qwen(b), benchText(b)
	b.SetBytes(int64(len(text)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tok.Encode(text, AllSpecials)
	}
}

// BenchmarkEncodeTiktokenGo is the peer: tiktoken-go's own encoder on the same text and
// vocabulary (no NFC, no bounded merging).
func BenchmarkEncodeTiktokenGo(b *testing.B) {
	tok, text := qwen(b), benchText(b)
	b.SetBytes(int64(len(text)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tok.core.EncodeOrdinary(text)
	}
}

func BenchmarkDecodeQwen(b *testing.B) {
	tok, text := qwen(b), benchText(b)
	ids := tok.Encode(text, AllSpecials)
	b.SetBytes(int64(len(text)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := tok.Decode(ids); err != nil {
			b.Fatal(err)
		}
	}
}

func benchHostile(b *testing.B, text string, sp Specials) {
	tok := qwen(b)
	b.SetBytes(int64(len(text)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tok.Encode(text, sp)
	}
}

func BenchmarkHostileSpaces1MB(b *testing.B) {
	benchHostile(b, strings.Repeat(" ", 1<<20), AllSpecials)
}
func BenchmarkHostileEndOfText1MB(b *testing.B) {
	benchHostile(b, strings.Repeat(EndOfText, (1<<20)/len(EndOfText)), AllSpecials)
}
func BenchmarkHostileEndOfTextAsText1MB(b *testing.B) {
	benchHostile(b, strings.Repeat(EndOfText, (1<<20)/len(EndOfText)), NoSpecials)
}
func BenchmarkHostileOneLetter1MB(b *testing.B) {
	benchHostile(b, strings.Repeat("a", 1<<20), AllSpecials)
}
