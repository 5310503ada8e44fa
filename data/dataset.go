package data

import (
	"fmt"
	"math/rand/v2"
	"strings"

	"github.com/qwen-tune/qwen-tune/autograd"
	"github.com/qwen-tune/qwen-tune/tokenizer"
)

// Sequence is one training sequence: ids and aligned labels, at most MaxLen long.
type Sequence struct {
	IDs, Labels []int
	// Segments and Positions are set on packed sequences (see Pack).
	Segments, Positions []int
	Source              string
	Truncated           bool // the example was longer than the maximum length
	FullLen             int  // its length before truncation
}

// Stats describe a prepared dataset.
type Stats struct {
	Examples, Tokens, Trained int // the sequences kept, their tokens and trained tokens
	// Truncated examples were longer than the maximum length and cut at the end, by up to
	// MaxCut tokens; Dropped lists those that lost every trained token that way (left out).
	Truncated, MaxCut int
	Dropped           []string
	// EmptyReplies counts assistant turns with no text (only their <|im_end|> is trained);
	// Empty names the examples holding them.
	EmptyReplies int
	Empty        []string
	Skipped      int // malformed examples left out (set by the caller)
}

// Summary describes the dataset in one line for a run's start, followed by one line per
// dropped example.
func (s Stats) Summary(maxLen int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d examples, %d tokens, %d trained; %d cut at --max-len %d", s.Examples, s.Tokens, s.Trained, s.Truncated, maxLen)
	if s.Truncated > 0 {
		fmt.Fprintf(&b, " (by up to %d tokens)", s.MaxCut)
	}
	if len(s.Dropped) > 0 {
		fmt.Fprintf(&b, ", %d dropped because the cut left nothing to train", len(s.Dropped))
	}
	if s.EmptyReplies > 0 {
		fmt.Fprintf(&b, "; %d empty assistant %s (%s)", s.EmptyReplies, plural(s.EmptyReplies, "reply", "replies"), list(s.Empty, 3))
	}
	fmt.Fprintf(&b, "; %d skipped", s.Skipped)
	for _, d := range s.Dropped {
		fmt.Fprintf(&b, "\n  dropped %s; raise --max-len to keep it", d)
	}
	return b.String()
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// list joins up to n items and says how many more there are.
func list(items []string, n int) string {
	if len(items) <= n {
		return strings.Join(items, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(items[:n], ", "), len(items)-n)
}

// Prepare renders every example to a sequence of at most maxLen tokens (longer ones are cut
// at the end, as Qwen's script does, and counted; one whose trained tokens all lie past the
// cut is dropped and listed in Stats). Pre-tokenized records keep their labels. It is an
// error when every example is dropped.
func Prepare(tok *tokenizer.Tokenizer, exs []Example, mask Mask, maxLen int) ([]Sequence, Stats, error) {
	if maxLen < 2 {
		return nil, Stats{}, fmt.Errorf("data: max length %d: need at least 2 tokens", maxLen)
	}
	var out []Sequence
	var st Stats
	for _, ex := range exs {
		var s Sequence
		s.Source = ex.Source
		switch {
		case ex.Conv != nil:
			if tok == nil {
				return nil, st, fmt.Errorf("data: %s: conversations need the model's vocabulary (qwen.tiktoken)", ex.Source)
			}
			s.IDs, s.Labels = Render(tok, ex.Conv, mask)
			if n := ex.Conv.emptyReplies(); n > 0 {
				st.EmptyReplies += n
				st.Empty = append(st.Empty, ex.Source)
			}
		case ex.Tokens != nil:
			s.IDs, s.Labels = ex.Tokens.InputIDs, ex.Tokens.Labels
		}
		s.FullLen = len(s.IDs)
		if len(s.IDs) > maxLen {
			trained := Targets(s.Labels)
			s.IDs, s.Labels, s.Truncated = s.IDs[:maxLen], s.Labels[:maxLen], true
			st.Truncated++
			st.MaxCut = max(st.MaxCut, s.FullLen-maxLen)
			if trained > 0 && Targets(s.Labels) == 0 {
				st.Dropped = append(st.Dropped, fmt.Sprintf("%s: %d tokens, all %d trained ones past --max-len %d", s.Source, s.FullLen, trained, maxLen))
				continue
			}
		}
		st.Examples++
		st.Tokens += len(s.IDs)
		st.Trained += Targets(s.Labels)
		out = append(out, s)
	}
	if len(out) == 0 && len(st.Dropped) > 0 {
		return nil, st, fmt.Errorf("data: all %d examples lose every trained token when cut at --max-len %d (the first: %s); raise --max-len", len(st.Dropped), maxLen, st.Dropped[0])
	}
	return out, st, nil
}

// Split shuffles sequences deterministically by seed and keeps the last fraction valRatio
// (at least one when valRatio > 0 and there are two or more) for validation.
func Split(seqs []Sequence, valRatio float64, seed uint64) (train, val []Sequence) {
	order := rand.New(rand.NewPCG(seed, 0x73706c6974)).Perm(len(seqs))
	shuffled := make([]Sequence, len(seqs))
	for i, j := range order {
		shuffled[i] = seqs[j]
	}
	nVal := int(valRatio * float64(len(seqs)))
	if valRatio > 0 && nVal == 0 && len(seqs) >= 2 {
		nVal = 1
	}
	return shuffled[:len(seqs)-nVal], shuffled[len(seqs)-nVal:]
}

// Epoch is the order in which an epoch visits the training sequences: a permutation drawn
// from (seed, epoch), so any step of any epoch can be found again when resuming.
func Epoch(n int, seed uint64, epoch int) []int {
	return rand.New(rand.NewPCG(seed, uint64(epoch)+1)).Perm(n)
}

// Pack concatenates sequences (in order) into rows of at most maxLen tokens. Each packed
// sequence keeps its own positions (restarting at 0) and attention stays inside it, so the
// result trains exactly like the separate sequences: Segments and Positions say where each
// one lies, and the first label of every sequence after the first in a row is ignored (it
// would be predicted from the previous conversation, which a separate sequence never does).
func Pack(seqs []Sequence, maxLen int) []Sequence {
	var out []Sequence
	var cur *Sequence
	for _, s := range seqs {
		if cur == nil || len(cur.IDs)+len(s.IDs) > maxLen {
			out = append(out, Sequence{Source: s.Source})
			cur = &out[len(out)-1]
		}
		seg := 0
		if len(cur.Segments) > 0 {
			seg = cur.Segments[len(cur.Segments)-1] + 1
		}
		for i := range s.IDs {
			l := s.Labels[i]
			if i == 0 {
				l = autograd.IgnoreIndex
			}
			cur.IDs = append(cur.IDs, s.IDs[i])
			cur.Labels = append(cur.Labels, l)
			cur.Segments = append(cur.Segments, seg)
			cur.Positions = append(cur.Positions, i)
		}
		cur.Truncated = cur.Truncated || s.Truncated
		cur.FullLen = len(cur.IDs)
	}
	return out
}

// Calibration cuts calibration samples for quantization: the sequences' tokens, in an order
// shuffled by seed, joined into one stream and cut into up to n windows of seqLen tokens
// (the last window may be shorter when the stream runs out).
func Calibration(seqs []Sequence, n, seqLen int, seed uint64) [][]int {
	order := rand.New(rand.NewPCG(seed, 0x63616c6962)).Perm(len(seqs))
	var stream []int
	for _, i := range order {
		stream = append(stream, seqs[i].IDs...)
		if len(stream) >= n*seqLen {
			break
		}
	}
	var out [][]int
	for start := 0; start < len(stream) && len(out) < n; start += seqLen {
		out = append(out, stream[start:min(start+seqLen, len(stream))])
	}
	return out
}
