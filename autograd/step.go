package autograd

import (
	"fmt"
	"math"
)

// IgnoreIndex is the label that contributes no loss (PyTorch's default ignore_index).
const IgnoreIndex = -100

// Step is the data one execution of a graph reads besides its parameters: token ids, labels,
// positions, the key mask and the KV cache. A graph is built once for a shape (Batch x Seq)
// and its ops hold a pointer to one Step, so the same graph runs again for the next batch or
// the next decoded token after the caller updates the Step.
type Step struct {
	Batch, Seq int     // rows, and new positions per row in this execution
	IDs        []int32 // [Batch*Seq] input token ids
	Labels     []int32 // [Batch*Seq] labels aligned with IDs (the loss shifts them); IgnoreIndex skips
	Past       int     // positions of every row already in Cache (0 without a cache)
	// KeyMask [Batch, Past+Seq] is true for real tokens; padded keys are never attended. nil
	// means every key is real.
	KeyMask []bool
	// Base [Batch] is each row's rotary base (dynamic NTK raises it for long prompts); nil
	// means RotaryBase for every row.
	Base       []float64
	RotaryBase float64
	// LogNSeq > 0 turns on LogN query scaling for keys beyond it (Qwen's seq_length).
	LogNSeq int
	// Rows [Batch] selects one position per row for SelectRows (the last real token when only
	// the next-token logits are wanted).
	Rows  []int32
	Cache *KVCache
	// Seed draws the dropout masks of this execution (training).
	Seed uint64
	// Segments [Batch*Seq], when set, packs several sequences in a row: a query attends only
	// to keys of its own segment. Positions [Batch*Seq], when set, are the rotary positions
	// (restarting at 0 in each packed segment). Both are for training graphs (no cache).
	Segments  []int32
	Positions []int32
}

// position is the rotary position of row b's t-th new token.
func (s *Step) position(b, t int) int {
	if s.Positions != nil {
		return int(s.Positions[b*s.Seq+t])
	}
	return s.Past + t
}

// sameSegment reports whether row b's query t may see key j under packing.
func (s *Step) sameSegment(b, t, j int) bool {
	return s.Segments == nil || s.Segments[b*s.Seq+t] == s.Segments[b*s.Seq+j]
}

// Keys is the number of key positions attended in this execution.
func (s *Step) Keys() int { return s.Past + s.Seq }

// base returns row b's rotary base.
func (s *Step) base(b int) float64 {
	if s.Base != nil {
		return s.Base[b]
	}
	return s.RotaryBase
}

// keyOK reports whether row b's key at absolute position j is a real token.
func (s *Step) keyOK(b, j int) bool {
	return s.KeyMask == nil || s.KeyMask[b*s.Keys()+j]
}

// logn is the LogN factor for the query at absolute position p: max(1, ln(p+1)/ln(seq)) when
// LogN is on and the key length exceeds seq, else 1.
func (s *Step) logn(p int) float64 {
	if s.LogNSeq <= 0 || s.Keys() <= s.LogNSeq || p+1 <= s.LogNSeq {
		return 1
	}
	return math.Log(float64(p+1)) / math.Log(float64(s.LogNSeq))
}

// Check validates the Step against the graph shape it is about to feed.
func (s *Step) Check() error {
	n := s.Batch * s.Seq
	switch {
	case s.Batch <= 0 || s.Seq <= 0:
		return fmt.Errorf("autograd: step of %d x %d positions", s.Batch, s.Seq)
	case s.IDs != nil && len(s.IDs) != n:
		return fmt.Errorf("autograd: step has %d ids for %d x %d positions", len(s.IDs), s.Batch, s.Seq)
	case s.Labels != nil && len(s.Labels) != n:
		return fmt.Errorf("autograd: step has %d labels for %d x %d positions", len(s.Labels), s.Batch, s.Seq)
	case s.KeyMask != nil && len(s.KeyMask) != s.Batch*s.Keys():
		return fmt.Errorf("autograd: key mask has %d entries for %d x %d keys", len(s.KeyMask), s.Batch, s.Keys())
	case s.Base != nil && len(s.Base) != s.Batch:
		return fmt.Errorf("autograd: %d rotary bases for %d rows", len(s.Base), s.Batch)
	case s.Rows != nil && len(s.Rows) != s.Batch:
		return fmt.Errorf("autograd: %d selected rows for %d rows", len(s.Rows), s.Batch)
	case s.Cache != nil && (s.Cache.Batch != s.Batch || s.Keys() > s.Cache.Max):
		return fmt.Errorf("autograd: KV cache holds %d x %d positions; step needs %d x %d", s.Cache.Batch, s.Cache.Max, s.Batch, s.Keys())
	case s.Segments != nil && (len(s.Segments) != n || s.Cache != nil):
		return fmt.Errorf("autograd: %d segment ids for %d positions (packing is for training graphs without a cache)", len(s.Segments), n)
	case s.Positions != nil && len(s.Positions) != n:
		return fmt.Errorf("autograd: %d positions for %d tokens", len(s.Positions), n)
	case s.Cache == nil && s.Past != 0:
		return fmt.Errorf("autograd: step starts at position %d but has no KV cache", s.Past)
	}
	return nil
}

// KVCache holds, per layer, the keys (after rotary) and values of every position seen so far,
// [Batch, Max, Heads, HeadDim] float32.
type KVCache struct {
	Batch, Max, Heads, HeadDim int
	K, V                       [][]float32
	// OnDevice marks a cache whose contents live on a GPU (bf16, held by the executor that
	// runs the graph); K and V stay empty and Max only records the capacity.
	OnDevice bool
}

// NewDeviceKVCache describes a cache kept on a GPU by the executor (nothing is allocated here).
func NewDeviceKVCache(layers, batch, max, heads, headDim int) *KVCache {
	return &KVCache{Batch: batch, Max: max, Heads: heads, HeadDim: headDim, K: make([][]float32, layers), V: make([][]float32, layers), OnDevice: true}
}

// NewKVCache allocates a cache for layers x batch x max positions.
func NewKVCache(layers, batch, max, heads, headDim int) *KVCache {
	c := &KVCache{Batch: batch, Max: max, Heads: heads, HeadDim: headDim, K: make([][]float32, layers), V: make([][]float32, layers)}
	for l := range c.K {
		c.K[l] = make([]float32, batch*max*heads*headDim)
		c.V[l] = make([]float32, batch*max*heads*headDim)
	}
	return c
}

// Bytes is the cache's size (bf16 on a device, float32 on the host).
func (c *KVCache) Bytes() int64 {
	elem := int64(4)
	if c.OnDevice {
		elem = 2
	}
	return int64(len(c.K)) * 2 * int64(c.Batch*c.Max*c.Heads*c.HeadDim) * elem
}

// Ensure grows the cache, keeping its contents, so it holds at least n positions per row.
func (c *KVCache) Ensure(n int) {
	if n <= c.Max {
		return
	}
	grown := max(n, 2*c.Max)
	if c.OnDevice {
		c.Max = grown
		return
	}
	hd := c.Heads * c.HeadDim
	for l := range c.K {
		for _, kv := range []*[]float32{&c.K[l], &c.V[l]} {
			old := *kv
			next := make([]float32, c.Batch*grown*hd)
			for b := 0; b < c.Batch; b++ {
				copy(next[b*grown*hd:], old[b*c.Max*hd:(b+1)*c.Max*hd])
			}
			*kv = next
		}
	}
	c.Max = grown
}

// SampleParams are the sampling settings of a GPU executor's on-device sampler.
type SampleParams struct {
	Greedy            bool
	Temperature       float64 // 0 or 1: none
	TopK              int
	TopP              float64
	RepetitionPenalty float64 // 0 or 1: none
}

// OpTime is the GPU time of one kind of instruction in a run.
type OpTime struct {
	Kind   string
	Count  int     // instructions of this kind per run
	Micros float64 // their GPU time per run
}
