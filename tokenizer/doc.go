// Package tokenizer is Qwen-7B's tokenizer: byte-level BPE over the tiktoken ranks in a model
// directory's qwen.tiktoken, Qwen's split pattern, NFC normalisation, and the 208 special
// tokens <|endoftext|>, <|im_start|>, <|im_end|>, <|extra_0|>..<|extra_204|> numbered after
// the ordinary tokens.
//
// In: text (and which special-token texts to parse: all, none or a set). Out: token ids;
// and back, ids to text with replacement characters, or a stream decoder that never emits
// half a character. ChatPrompt builds Qwen's ChatML prompts with roles and contents encoded
// as ordinary text, so typed "<|im_end|>" cannot fake a turn.
//
// Cost is bounded on hostile input: special tokens are found by a linear scan, pieces by a
// linear hand-written scanner, and long pieces merged in O(n log n).
package tokenizer
