package tokenizer

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	tiktoken "github.com/pkoukk/tiktoken-go"
)

// Qwen's special tokens, numbered from the vocabulary's size (151643 for Qwen-7B).
const (
	EndOfText = "<|endoftext|>"
	IMStart   = "<|im_start|>"
	IMEnd     = "<|im_end|>"
	// NumExtra is the number of <|extra_N|> tokens.
	NumExtra = 205
	// NumSpecial is the number of special tokens: endoftext, im_start, im_end and the extras.
	NumSpecial = 3 + NumExtra
)

// SpecialNames lists the special tokens in id order.
func SpecialNames() []string {
	names := []string{EndOfText, IMStart, IMEnd}
	for i := 0; i < NumExtra; i++ {
		names = append(names, fmt.Sprintf("<|extra_%d|>", i))
	}
	return names
}

// corePieceLimit is the longest piece handed to tiktoken-go's BPE core, whose merge is
// quadratic in the piece length; longer pieces use mergeLong.
const corePieceLimit = 64

// Tokenizer is Qwen's byte-level BPE: tiktoken ranks, Qwen's split pattern, NFC
// normalisation and 208 special tokens. It is safe for concurrent use.
type Tokenizer struct {
	tokens      [][]byte       // ordinary tokens by id
	ranks       map[string]int // ordinary token bytes -> id
	maxTokenLen int
	special     []string // special[i] has id len(tokens)+i
	specialIDs  map[string]int
	core        *tiktoken.Tiktoken
}

// Load reads the vocabulary `qwen.tiktoken` from a model directory.
func Load(dir string) (*Tokenizer, error) {
	return LoadFile(filepath.Join(dir, VocabFile))
}

// LoadFile reads a tiktoken rank file.
func LoadFile(path string) (*Tokenizer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w (a model directory must hold %s)", err, VocabFile)
	}
	defer f.Close()
	tokens, err := ParseVocabulary(f, path)
	if err != nil {
		return nil, err
	}
	return New(tokens)
}

// New builds a tokenizer from ordinary tokens indexed by rank; the special tokens follow.
func New(tokens [][]byte) (*Tokenizer, error) {
	t := &Tokenizer{tokens: tokens, ranks: make(map[string]int, len(tokens)), specialIDs: map[string]int{}}
	for id, tok := range tokens {
		t.ranks[string(tok)] = id
		t.maxTokenLen = max(t.maxTokenLen, len(tok))
	}
	t.special = SpecialNames()
	specials := map[string]int{}
	for i, name := range t.special {
		t.specialIDs[name] = len(tokens) + i
		specials[name] = len(tokens) + i
	}
	core, err := tiktoken.NewCoreBPE(t.ranks, specials, Pattern)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	t.core = tiktoken.NewTiktoken(core, &tiktoken.Encoding{Name: "qwen", PatStr: Pattern, MergeableRanks: t.ranks, SpecialTokens: specials}, nil)
	return t, nil
}

// Size is the number of ids in use: ordinary tokens plus special tokens (151851 for Qwen-7B).
func (t *Tokenizer) Size() int { return len(t.tokens) + len(t.special) }

// OrdinarySize is the number of ordinary tokens; the first special token has this id.
func (t *Tokenizer) OrdinarySize() int { return len(t.tokens) }

// SpecialID returns the id of a special token such as "<|im_end|>".
func (t *Tokenizer) SpecialID(name string) (int, bool) {
	id, ok := t.specialIDs[name]
	return id, ok
}

// IsSpecial reports whether id is a special token.
func (t *Tokenizer) IsSpecial(id int) bool { return id >= len(t.tokens) && id < t.Size() }

// EndOfTextID, IMStartID and IMEndID are the ids of Qwen's control tokens.
func (t *Tokenizer) EndOfTextID() int { return len(t.tokens) }
func (t *Tokenizer) IMStartID() int   { return len(t.tokens) + 1 }
func (t *Tokenizer) IMEndID() int     { return len(t.tokens) + 2 }

// Specials says which special-token texts Encode turns into special tokens; the others are
// encoded as ordinary text.
type Specials struct {
	all   bool
	names map[string]bool
}

// AllSpecials parses every special-token text (the tokenizer's default); NoSpecials none
// (what the chat builder uses for roles and contents, so users cannot inject turns).
var (
	AllSpecials = Specials{all: true}
	NoSpecials  = Specials{}
)

func (s Specials) allows(name string) bool { return s.all || s.names[name] }

// SpecialSet allows exactly the named special tokens; a name that is not one of Qwen's
// special tokens is an error (Qwen does not allow adding any).
func (t *Tokenizer) SpecialSet(names ...string) (Specials, error) {
	s := Specials{names: map[string]bool{}}
	for _, n := range names {
		if _, ok := t.specialIDs[n]; !ok {
			return s, fmt.Errorf("tokenizer: %q is not a special token (Qwen's are %s, %s, %s and <|extra_0|>..<|extra_%d|>)", n, EndOfText, IMStart, IMEnd, NumExtra-1)
		}
		s.names[n] = true
	}
	return s, nil
}

// ParseSpecials reads "all", "none", or a comma-separated list of special tokens.
func (t *Tokenizer) ParseSpecials(spec string) (Specials, error) {
	switch spec {
	case "all":
		return AllSpecials, nil
	case "none", "":
		return NoSpecials, nil
	}
	var names []string
	for _, n := range strings.Split(spec, ",") {
		if n = strings.TrimSpace(n); n != "" {
			names = append(names, n)
		}
	}
	return t.SpecialSet(names...)
}

// Encode NFC-normalises text (as Python does, see NFC) and encodes it; special-token text becomes a special token
// where allowed, and ordinary text otherwise.
func (t *Tokenizer) Encode(text string, allowed Specials) []int {
	text = NFC(text)
	out := make([]int, 0, len(text)/3+1)
	for {
		at, id, n := t.nextSpecial(text, allowed)
		if at < 0 {
			return t.encodeOrdinary(text, out)
		}
		out = t.encodeOrdinary(text[:at], out)
		out = append(out, id)
		text = text[at+n:]
	}
}

// EncodeOrdinary encodes text with every special-token text treated as ordinary text.
func (t *Tokenizer) EncodeOrdinary(text string) []int { return t.Encode(text, NoSpecials) }

// nextSpecial finds the first allowed special token in text: its offset, id and length, or
// offset -1. Every special token has the form <|name|>, so each "<|" is checked against the
// table with bounded work.
func (t *Tokenizer) nextSpecial(text string, allowed Specials) (int, int, int) {
	if !allowed.all && len(allowed.names) == 0 {
		return -1, 0, 0
	}
	const longest = len("<|extra_204|>")
	for pos := 0; ; {
		i := strings.Index(text[pos:], "<|")
		if i < 0 {
			return -1, 0, 0
		}
		i += pos
		window := text[i+2 : min(len(text), i+longest)]
		if j := strings.Index(window, "|>"); j >= 0 {
			name := text[i : i+2+j+2]
			if id, ok := t.specialIDs[name]; ok && allowed.allows(name) {
				return i, id, len(name)
			}
		}
		pos = i + 1
	}
}

// encodeOrdinary appends the tokens of text with no special tokens. The scanner cuts text
// into the pattern's pieces; a piece that is a token costs one lookup, a short one is merged
// by tiktoken-go's BPE core (a piece on its own splits into itself: the pattern never looks
// behind, and its one look-ahead gives the same piece at the end of the text), and a piece
// longer than corePieceLimit by mergeLong in O(n log n).
func (t *Tokenizer) encodeOrdinary(text string, out []int) []int {
	for i := 0; i < len(text); {
		j := nextPiece(text, i)
		piece := text[i:j]
		if id, ok := t.ranks[piece]; ok {
			out = append(out, id)
		} else if len(piece) > corePieceLimit {
			out = t.mergeLong(piece, out)
		} else {
			out = append(out, t.core.EncodeOrdinary(piece)...)
		}
		i = j
	}
	return out
}

// TokenBytes returns the bytes of one token (the text of a special token).
func (t *Tokenizer) TokenBytes(id int) ([]byte, error) {
	switch {
	case id >= 0 && id < len(t.tokens):
		return t.tokens[id], nil
	case t.IsSpecial(id):
		return []byte(t.special[id-len(t.tokens)]), nil
	}
	return nil, fmt.Errorf("tokenizer: token id %d is outside the vocabulary (0..%d)", id, t.Size()-1)
}

// DecodeBytes joins the bytes of the tokens.
func (t *Tokenizer) DecodeBytes(ids []int) ([]byte, error) {
	var out []byte
	for _, id := range ids {
		b, err := t.TokenBytes(id)
		if err != nil {
			return nil, err
		}
		out = append(out, b...)
	}
	return out, nil
}

// Decode joins the tokens' bytes and decodes them as UTF-8, with U+FFFD for ill-formed bytes.
func (t *Tokenizer) Decode(ids []int) (string, error) {
	b, err := t.DecodeBytes(ids)
	if err != nil {
		return "", err
	}
	return DecodeUTF8(b), nil
}

// String names the allowed set as ParseSpecials reads it.
func (s Specials) String() string {
	if s.all {
		return "all"
	}
	if len(s.names) == 0 {
		return "none"
	}
	names := make([]string, 0, len(s.names))
	for n := range s.names {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ",")
}
