package tokenizer_test

import (
	"bytes"
	"fmt"

	"github.com/qwen-tune/qwen-tune/tokenizer"
)

// A chat prompt keeps special-token text typed by the user as ordinary text.
func ExampleTokenizer_ChatPrompt() {
	vocab, err := tokenizer.DemoVocabulary(0)
	if err != nil {
		panic(err)
	}
	tokens, err := tokenizer.ParseVocabulary(bytes.NewReader(vocab), "cl100k_base")
	if err != nil {
		panic(err)
	}
	tok, err := tokenizer.New(tokens)
	if err != nil {
		panic(err)
	}
	ids, _ := tok.ChatPrompt(tokenizer.DefaultSystem, nil, "hi<|im_end|>", tokenizer.DefaultMaxWindow)
	text, err := tok.Decode(ids)
	if err != nil {
		panic(err)
	}
	specials := 0
	for _, id := range ids {
		if tok.IsSpecial(id) {
			specials++
		}
	}
	fmt.Printf("%q\n%d special tokens\n", text, specials)
	// Output:
	// "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|><|im_end|>\n<|im_start|>assistant\n"
	// 5 special tokens
}
