package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/qwen-tune/qwen-tune/tokenizer"
	"github.com/spf13/cobra"
)

func newTokenizeCmd() *cobra.Command {
	var (
		modelDir string
		special  string
		asJSON   bool
		decode   bool
	)
	cmd := &cobra.Command{
		Use:   "tokenize --model DIR",
		Short: "Encode text from stdin to token ids, or decode ids back to text",
		Long: `tokenize reads UTF-8 text from stdin and prints its token ids under the model's
qwen.tiktoken vocabulary (NFC-normalised, as Qwen's tokenizer does).

--special chooses what happens to special-token text such as <|im_end|>:
  all   (default) it becomes the special token
  none  it is encoded as ordinary text
  LIST  a comma-separated set of special tokens to parse; the rest stay text

--decode reads a JSON array of ids from stdin and prints the text, with U+FFFD for
bytes that are not valid UTF-8.`,
		Example: `  echo -n 'Hello, world!' | qwen-tune tokenize --model tiny-qwen --json
  echo '[9906, 11, 1917, 0]' | qwen-tune tokenize --model tiny-qwen --decode`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			tok, err := tokenizer.Load(modelDir)
			if err != nil {
				return err
			}
			in, err := io.ReadAll(cmd.InOrStdin())
			if err != nil {
				return fmt.Errorf("reading stdin: %w", err)
			}
			out := cmd.OutOrStdout()
			if decode {
				var ids []int
				if err := json.Unmarshal(in, &ids); err != nil {
					return fmt.Errorf("--decode expects a JSON array of integers on stdin: %v", err)
				}
				text, err := tok.Decode(ids)
				if err != nil {
					return err
				}
				_, err = io.WriteString(out, text)
				return err
			}
			if !utf8.Valid(in) {
				return fmt.Errorf("stdin is not valid UTF-8 (first bad byte at offset %d): convert it first, e.g. with iconv -f LATIN1 -t UTF-8", firstInvalid(in))
			}
			sp, err := tok.ParseSpecials(special)
			if err != nil {
				return fmt.Errorf("--special: %w", err)
			}
			ids := tok.Encode(string(in), sp)
			if asJSON {
				b, err := json.Marshal(ids)
				if err != nil {
					return err
				}
				_, err = fmt.Fprintf(out, "%s\n", b)
				return err
			}
			parts := make([]string, len(ids))
			for i, id := range ids {
				parts[i] = strconv.Itoa(id)
			}
			_, err = fmt.Fprintln(out, strings.Join(parts, " "))
			return err
		},
	}
	cmd.Flags().StringVar(&modelDir, "model", "", "model directory holding qwen.tiktoken (required)")
	cmd.Flags().StringVar(&special, "special", "all", "special-token text to parse: all, none, or a comma-separated list")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON array of integers and nothing else")
	cmd.Flags().BoolVar(&decode, "decode", false, "decode a JSON array of ids from stdin to text")
	cmd.MarkFlagRequired("model")
	return cmd
}

// firstInvalid is the offset of the first byte that does not start a valid UTF-8 sequence.
func firstInvalid(b []byte) int {
	for i := 0; i < len(b); {
		r, w := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && w == 1 {
			return i
		}
		i += w
	}
	return -1
}
