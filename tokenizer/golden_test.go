package tokenizer

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/qwen-tune/qwen-tune/internal/golden"
)

type goldenFile struct {
	Vocab   map[string]int `json:"vocab"`
	Pattern string         `json:"pattern"`
	Cases   []struct {
		Text          string `json:"text"`
		IDsAllSpecial []int  `json:"ids_all_special"`
		IDsNoSpecial  []int  `json:"ids_no_special"`
	} `json:"cases"`
	Chats []struct {
		System     string      `json:"system"`
		History    [][2]string `json:"history"`
		Query      string      `json:"query"`
		ContextIDs []int       `json:"context_ids"`
	} `json:"chats"`
}

var (
	qwenOnce sync.Once
	qwenTok  *Tokenizer
	qwenErr  error
)

// qwen loads the real Qwen-7B vocabulary from the shared test data (once per test binary).
func qwen(t testing.TB) *Tokenizer {
	t.Helper()
	path := golden.Path(t, "tokenizer/qwen.tiktoken")
	qwenOnce.Do(func() { qwenTok, qwenErr = LoadFile(path) })
	if qwenErr != nil {
		t.Fatal(qwenErr)
	}
	return qwenTok
}

func readGolden(t *testing.T) goldenFile {
	t.Helper()
	b, err := os.ReadFile(golden.Path(t, "tokenizer/golden.json"))
	if err != nil {
		t.Fatal(err)
	}
	var g goldenFile
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	return g
}

func TestGoldenVocabulary(t *testing.T) {
	tok, g := qwen(t), readGolden(t)
	if g.Pattern != Pattern {
		t.Errorf("split pattern differs from the reference:\n got %s\nwant %s", Pattern, g.Pattern)
	}
	for name, want := range map[string]int{EndOfText: g.Vocab["endoftext"], IMStart: g.Vocab["im_start"], IMEnd: g.Vocab["im_end"], "<|extra_0|>": g.Vocab["extra_0"], "<|extra_204|>": g.Vocab["extra_204"]} {
		if id, ok := tok.SpecialID(name); !ok || id != want {
			t.Errorf("%s: id %d, want %d", name, id, want)
		}
	}
	if tok.OrdinarySize() != g.Vocab["regular_tokens"] || tok.Size() != 151851 {
		t.Errorf("sizes %d ordinary / %d in all, want %d / 151851", tok.OrdinarySize(), tok.Size(), g.Vocab["regular_tokens"])
	}
}

func TestGoldenCases(t *testing.T) {
	tok, g := qwen(t), readGolden(t)
	if len(g.Cases) == 0 {
		t.Fatal("golden.json has no cases")
	}
	for _, c := range g.Cases {
		if got := tok.Encode(c.Text, AllSpecials); !slices.Equal(got, c.IDsAllSpecial) {
			t.Errorf("Encode(%q, all)\n got %v\nwant %v", c.Text, got, c.IDsAllSpecial)
		}
		if got := tok.Encode(c.Text, NoSpecials); !slices.Equal(got, c.IDsNoSpecial) {
			t.Errorf("Encode(%q, none)\n got %v\nwant %v", c.Text, got, c.IDsNoSpecial)
		}
		// Decoding gives back the NFC form of the text (the reference normalises first).
		if s, err := tok.Decode(c.IDsAllSpecial); err != nil || s != nfc(c.Text) {
			t.Errorf("Decode(%v) = %q, %v; want %q", c.IDsAllSpecial, s, err, nfc(c.Text))
		}
	}
}

func TestGoldenChats(t *testing.T) {
	tok, g := qwen(t), readGolden(t)
	if len(g.Chats) == 0 {
		t.Fatal("golden.json has no chats")
	}
	for i, c := range g.Chats {
		var hist []Turn
		for _, h := range c.History {
			hist = append(hist, Turn{User: h[0], Assistant: h[1]})
		}
		got, kept := tok.ChatPrompt(c.System, hist, c.Query, DefaultMaxWindow)
		if !slices.Equal(got, c.ContextIDs) {
			t.Errorf("chat %d\n got %v\nwant %v", i, got, c.ContextIDs)
		}
		if kept != len(hist) {
			t.Errorf("chat %d kept %d of %d history turns", i, kept, len(hist))
		}
	}
}

// The documented vectors of QWEN.md.
func TestDocumentedVectors(t *testing.T) {
	tok := qwen(t)
	text := `print("<|endoftext|>")`
	if got, want := tok.Encode(text, NoSpecials), []int{1350, 9639, 91, 8691, 723, 427, 91, 82598}; !slices.Equal(got, want) {
		t.Errorf("no specials: %v, want %v", got, want)
	}
	if got, want := tok.Encode(text, AllSpecials), []int{1350, 445, 151643, 899}; !slices.Equal(got, want) {
		t.Errorf("all specials: %v, want %v", got, want)
	}
}

func TestLoadFromModelDir(t *testing.T) {
	src := golden.Path(t, "tokenizer/qwen.tiktoken")
	dir := t.TempDir()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, VocabFile), b, 0o644); err != nil {
		t.Fatal(err)
	}
	tok, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if tok.Size() != 151851 {
		t.Fatalf("size %d", tok.Size())
	}
}
