package serve

import (
	"path/filepath"
	"testing"

	"github.com/qwen-tune/qwen-tune/tokenizer"
)

// BenchmarkQwenMask times one token mask over Qwen's 151,643 tokens, uncached (a new state
// each time) and cached (inside a string, where the state repeats).
func BenchmarkQwenMask(b *testing.B) {
	tok, err := tokenizer.LoadFile(filepath.Join("..", "..", "..", "shared", "testdata", "tokenizer", "qwen.tiktoken"))
	if err != nil {
		b.Skip(err)
	}
	vocabOf(tok)
	s := mustSchema(b, recipeSchema)
	for _, c := range []struct{ name, prefix string }{{"start", ``}, {"in a string", `{"name": "Pan`}, {"after a key", `{"name": "Pancakes", "minutes"`}} {
		b.Run(c.name, func(b *testing.B) {
			st := startState(s)
			for _, x := range []byte(c.prefix) {
				st = st.advance(x)
			}
			bits := make([]uint64, (tok.Size()+63)/64)
			for b.Loop() {
				clear(bits)
				vocabOf(tok).allowed(st, bits)
			}
		})
	}
}
