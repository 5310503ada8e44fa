package serve

import (
	"bytes"
	"math"
	"slices"
	"sort"
	"sync"
	"unicode/utf8"

	"github.com/qwen-tune/qwen-tune/tokenizer"
)

// maskCacheEntries bounds the token masks a constraint keeps (each is a bit per id: 19 KB
// for Qwen's vocabulary).
const maskCacheEntries = 256

// vocab is a tokenizer's ordinary tokens sorted by their bytes, so that a walk over them
// steps each shared prefix once and skips every token under a prefix the automaton refuses,
// as a walk over a trie would.
//
// Inside a string (or the thought before a call) nearly every token is plain text that
// leaves the automaton where it was; those are marked once (plainString, plainLine) and
// allowed without a walk, which would otherwise step most of the vocabulary's bytes.
type vocab struct {
	toks        [][]byte
	ids         []int
	plainString []bool // complete UTF-8 without ", \ or control characters
	plainLine   []bool // complete UTF-8 without control characters but tab
	size        int    // ids in all, special tokens included
}

var vocabs sync.Map // *tokenizer.Tokenizer -> func() *vocab

// vocabOf builds tok's sorted vocabulary once.
func vocabOf(tok *tokenizer.Tokenizer) *vocab {
	f, _ := vocabs.LoadOrStore(tok, sync.OnceValue(func() *vocab {
		v := &vocab{size: tok.Size()}
		for id := range tok.OrdinarySize() {
			b, err := tok.TokenBytes(id)
			if err != nil || len(b) == 0 {
				continue // an ordinary id always has bytes
			}
			v.toks = append(v.toks, b)
			v.ids = append(v.ids, id)
		}
		order := make([]int, len(v.toks))
		for i := range order {
			order[i] = i
		}
		sort.Slice(order, func(a, b int) bool { return bytes.Compare(v.toks[order[a]], v.toks[order[b]]) < 0 })
		toks, ids := make([][]byte, len(order)), make([]int, len(order))
		for i, o := range order {
			toks[i], ids[i] = v.toks[o], v.ids[o]
		}
		v.toks, v.ids = toks, ids
		for _, t := range toks {
			v.plainString = append(v.plainString, plain(t, func(b byte) bool { return b >= 0x20 && b != '"' && b != '\\' }))
			v.plainLine = append(v.plainLine, plain(t, func(b byte) bool { return b >= 0x20 || b == '\t' }))
		}
		return v
	}))
	return f.(func() *vocab)()
}

// plain reports whether t is complete UTF-8 whose ASCII bytes all pass ok.
func plain(t []byte, ok func(byte) bool) bool {
	if !utf8.Valid(t) {
		return false
	}
	for _, b := range t {
		if b < utf8.RuneSelf && !ok(b) {
			return false
		}
	}
	return true
}

// plainRoom says whether st is inside a string (inString) or the thought line (room: the
// bytes the line may still take) at a character boundary in every thread; room is -1
// otherwise.
func plainRoom(st state) (inString bool, room int) {
	room = -1
	for i, f := range st {
		switch {
		case f != nil && f.kind == fString && f.n == 0 && (i == 0 || inString):
			inString = true
		case f != nil && f.kind == fLine && f.n&(1<<24-1) == 0 && (i == 0 || room >= 0):
			r := maxThoughtBytes - f.n>>24
			if i > 0 {
				r = min(r, room)
			}
			room = r
		default:
			return false, -1
		}
	}
	if inString && room >= 0 {
		return false, -1
	}
	return inString, room
}

// allowed sets in bits the ids whose bytes st can take.
func (v *vocab) allowed(st state, bits []uint64) {
	inString, room := plainRoom(st)
	depth := []state{st} // depth[d]: the state after the first d bytes of the current token
	var prev []byte
	for i := 0; i < len(v.toks); {
		t := v.toks[i]
		if inString && v.plainString[i] || room >= 0 && v.plainLine[i] && len(t) <= room {
			bits[v.ids[i]/64] |= 1 << (v.ids[i] % 64)
			i++
			continue
		}
		l := 0
		for l < len(prev) && l < len(t) && l < len(depth)-1 && prev[l] == t[l] {
			l++
		}
		depth = depth[:l+1]
		prev = t
		ok := true
		for d := l; d < len(t); d++ {
			next := depth[d].advance(t[d])
			if len(next) == 0 {
				// no token that starts with t[:d+1] can come next
				p := t[:d+1]
				i += sort.Search(len(v.toks)-i, func(j int) bool {
					u := v.toks[i+j]
					return !bytes.HasPrefix(u, p) && bytes.Compare(u, p) > 0
				})
				ok = false
				break
			}
			depth = append(depth, next)
		}
		if ok {
			bits[v.ids[i]/64] |= 1 << (v.ids[i] % 64)
			i++
		}
	}
}

// grammarConstraint is a model.Constraint that keeps a generation inside an automaton's
// language, then allows only a stop id.
type grammarConstraint struct {
	v     *vocab
	tok   *tokenizer.Tokenizer
	st    state
	stops []int
	cache map[string][]uint64
	key   []byte
}

func newGrammarConstraint(tok *tokenizer.Tokenizer, st state, stops []int) *grammarConstraint {
	return &grammarConstraint{v: vocabOf(tok), tok: tok, st: st, stops: stops, cache: map[string][]uint64{}}
}

// bits returns the allowed ids of the current state as a bit set.
func (c *grammarConstraint) bits() []uint64 {
	c.key = c.st.key(c.key[:0])
	if b, ok := c.cache[string(c.key)]; ok {
		return b
	}
	b := make([]uint64, (c.v.size+63)/64)
	c.v.allowed(c.st, b)
	if c.st.complete() || len(c.st) == 0 {
		for _, id := range c.stops {
			b[id/64] |= 1 << (id % 64)
		}
	}
	if len(c.cache) >= maskCacheEntries {
		clear(c.cache)
	}
	c.cache[string(c.key)] = b
	return b
}

// Mask sets the scores of ids the grammar does not allow next to -Inf.
func (c *grammarConstraint) Mask(scores []float64) {
	b := c.bits()
	for i := range scores {
		if i/64 >= len(b) || b[i/64]&(1<<(i%64)) == 0 {
			scores[i] = math.Inf(-1)
		}
	}
}

// Accept moves the automaton past id's bytes (a stop id ends the text).
func (c *grammarConstraint) Accept(id int) {
	if slices.Contains(c.stops, id) {
		c.st = nil
		return
	}
	b, err := c.tok.TokenBytes(id)
	if err != nil || c.tok.IsSpecial(id) {
		c.st = nil
		return
	}
	for _, x := range b {
		c.st = c.st.advance(x)
	}
}
