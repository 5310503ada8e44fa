package tokenizer

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"golang.org/x/text/unicode/norm"
)

// nfcCases are outputs of Python 3.11's unicodedata.normalize("NFC", ...) (Unicode 14.0),
// which Qwen's tokenizer applies: runs of more than 30 combining marks are ordered and
// composed whole, and nothing is inserted.
var nfcCases = []struct{ name, in, want string }{
	{"31 graves", strings.Repeat("\u0300", 31), strings.Repeat("\u0300", 31)},
	{"e and 31 acutes", "e" + strings.Repeat("\u0301", 31), "\u00e9" + strings.Repeat("\u0301", 30)},
	// the cedilla (class 202) moves before the 30 acutes (230) and composes with e
	{"a cedilla after 30 acutes", "e" + strings.Repeat("\u0301", 30) + "\u0327", "\u0229" + strings.Repeat("\u0301", 30)},
	{"classes reordered across 30", "a" + strings.Repeat("\u0301", 20) + strings.Repeat("\u0327", 15), "\u00e1" + strings.Repeat("\u0327", 15) + strings.Repeat("\u0301", 19)},
	{"hangul then marks", "\u1100\u1161\u11a8" + strings.Repeat("\u0300", 32) + "x", "\uac01" + strings.Repeat("\u0300", 32) + "x"},
	{"a joiner in the input stays", "o\u034f" + strings.Repeat("\u0308", 33), "o\u034f" + strings.Repeat("\u0308", 33)},
	{"short runs", "Cafe\u0301 \u1112\u1161\u11ab", "Caf\u00e9 \ud55c"},
}

func TestNFCMatchesPython(t *testing.T) {
	for _, c := range nfcCases {
		if got := NFC(c.in); got != c.want {
			t.Errorf("%s: NFC = %+q, want %+q", c.name, got, c.want)
		}
		if got := unboundedNFC(c.in); got != c.want {
			t.Errorf("%s: the unbounded path gives %+q, want %+q", c.name, got, c.want)
		}
	}
}

// TestNFCMarkRunsEncode: a run of 31 grave accents encodes as 31 grave tokens with Qwen's
// vocabulary, as OpenAI's tiktoken does after Python's NFC (no U+034F bytes 137, 237).
func TestNFCMarkRunsEncode(t *testing.T) {
	tok := qwen(t)
	one := tok.Encode("\u0300", Specials{})
	if len(one) != 1 {
		t.Fatalf("U+0300 encodes as %v, expected one token", one)
	}
	got := tok.Encode(strings.Repeat("\u0300", 31), Specials{})
	if want := slices.Repeat(one, 31); !slices.Equal(got, want) {
		t.Errorf("31 graves encode as %v, want %v", got, want)
	}
}

// TestUnboundedNFCAgreesWithXText: where no run is long enough for the Stream-Safe format to
// apply, the unbounded path must give exactly what golang.org/x/text gives.
func TestUnboundedNFCAgreesWithXText(t *testing.T) {
	marks := []string{"\u0300", "\u0301", "\u0308", "\u0327", "\u0323", "\u031b", "\u0345", "\u05b4", "\u093c", "\u3099"}
	bases := []string{"a", "e", "o", "u", "A", "\u03b1", "\u0399", "\u1100", "\u1161", "\u11a8", "\uac00", "\u304b", "\u00e9", "\u1e9b", " ", "\xff"}
	r := rand.New(rand.NewPCG(5, 9))
	for i := 0; i < 3000; i++ {
		var sb strings.Builder
		for n := 1 + r.IntN(12); n > 0; n-- {
			if r.IntN(3) == 0 {
				sb.WriteString(bases[r.IntN(len(bases))])
			} else {
				sb.WriteString(marks[r.IntN(len(marks))])
			}
		}
		s := sb.String()
		if got, want := unboundedNFC(s), norm.NFC.String(s); got != want {
			t.Fatalf("%+q: unbounded %+q, x/text %+q", s, got, want)
		}
	}
}

// FuzzNFC: NFC is idempotent, never adds U+034F, and equals x/text's NFC wherever x/text did
// not split a run.
func FuzzNFC(f *testing.F) {
	for _, c := range nfcCases {
		f.Add(c.in)
	}
	f.Add("\u0061" + strings.Repeat("\u0301\u0327", 20))
	f.Fuzz(func(t *testing.T, s string) {
		out := NFC(s)
		if again := NFC(out); again != out {
			t.Fatalf("%+q: NFC not idempotent: %+q then %+q", s, out, again)
		}
		if strings.Count(out, cgj) > strings.Count(s, cgj) {
			t.Fatalf("%+q: NFC inserted U+034F: %+q", s, out)
		}
		if x := norm.NFC.String(s); strings.Count(x, cgj) == strings.Count(s, cgj) && unboundedNFC(s) != x {
			t.Fatalf("%+q: unbounded %+q, x/text %+q", s, unboundedNFC(s), x)
		}
	})
}
