package main

import (
	"fmt"
	"os"

	"github.com/spf13/pflag"

	"github.com/qwen-tune/qwen-tune/tokenizer"
)

// textInput is the --data or --text of eval and quantize: a dataset file, or a plain text
// file.
type textInput struct{ data, text string }

func (t *textInput) register(f *pflag.FlagSet, dataUsage, textUsage string) {
	f.StringVar(&t.data, "data", "", dataUsage)
	f.StringVar(&t.text, "text", "", textUsage)
}

// one reports whether exactly one of --data and --text is given.
func (t *textInput) one() bool { return (t.data == "") != (t.text == "") }

// encodeText reads --text and encodes it with tok; special-token text stays ordinary text.
func (t *textInput) encodeText(tok *tokenizer.Tokenizer) ([]int, error) {
	b, err := os.ReadFile(t.text)
	if err != nil {
		return nil, fmt.Errorf("--text: %w", err)
	}
	return tok.Encode(string(b), tokenizer.NoSpecials), nil
}
