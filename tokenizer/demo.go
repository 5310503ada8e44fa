package tokenizer

import (
	"bytes"
	"fmt"

	"github.com/pkoukk/tiktoken-go-loader/assets"
)

// DemoRanks is the size of the full demo vocabulary: cl100k_base's 100256 ordinary tokens.
const DemoRanks = 100256

// DemoVocabulary returns a vocabulary file that may ship with the project: the first n ranks
// of OpenAI's cl100k_base (MIT-licensed, embedded by tiktoken-go-loader), in qwen.tiktoken's
// format; Qwen's 208 special tokens follow it as with the real vocabulary. Any prefix of a
// BPE rank list is itself a valid BPE vocabulary (every token is a merge of two
// lower-ranked ones), so a small n gives a small embedding for a tiny model. n <= 0 or
// n > DemoRanks means all of them.
func DemoVocabulary(n int) ([]byte, error) {
	if n <= 0 || n > DemoRanks {
		n = DemoRanks
	}
	if n < 256 {
		return nil, fmt.Errorf("tokenizer: a vocabulary needs at least the 256 byte tokens, got %d", n)
	}
	data, err := assets.Assets.ReadFile("cl100k_base.tiktoken")
	if err != nil {
		return nil, fmt.Errorf("tokenizer: embedded cl100k_base: %w", err)
	}
	end := 0
	for i := 0; i < n; i++ {
		nl := bytes.IndexByte(data[end:], '\n')
		if nl < 0 {
			return nil, fmt.Errorf("tokenizer: embedded cl100k_base has fewer than %d lines", n)
		}
		end += nl + 1
	}
	return data[:end:end], nil
}
