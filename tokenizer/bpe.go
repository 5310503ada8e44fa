package tokenizer

// Byte-pair merging of one long piece in O(n log n).
//
// tiktoken's rule: start from single bytes; repeatedly merge the adjacent pair whose
// concatenation has the lowest rank, the leftmost such pair on ties, until no adjacent pair
// is a token. tiktoken (and tiktoken-go) find that pair by a linear scan per merge, which is
// quadratic: a megabyte of spaces would take hours. Here the candidate pairs sit in a heap
// ordered by (rank, start offset) and a linked list of parts; a heap entry is stale once
// either part it joins has changed, which a per-part version number detects. The merges
// happen in the same order, so the tokens are identical.

import "container/heap"

type pairEntry struct {
	rank  int
	start int // byte offset of the left part: leftmost wins ties
	part  int // index of the left part
	ver   uint32
}

type pairHeap []pairEntry

func (h pairHeap) Len() int { return len(h) }
func (h pairHeap) Less(i, j int) bool {
	if h[i].rank != h[j].rank {
		return h[i].rank < h[j].rank
	}
	return h[i].start < h[j].start
}
func (h pairHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *pairHeap) Push(x any)   { *h = append(*h, x.(pairEntry)) }
func (h *pairHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

// mergeLong encodes one piece (which is not itself a token) by byte-pair merging.
func (t *Tokenizer) mergeLong(piece string, out []int) []int {
	n := len(piece)
	// Part i covers piece[start[i]:start[next[i]]]; parts are born as single bytes.
	start := make([]int, n+1)
	next := make([]int, n+1)
	prev := make([]int, n+1)
	ver := make([]uint32, n+1)
	for i := 0; i <= n; i++ {
		start[i], next[i], prev[i] = i, i+1, i-1
	}
	rankOf := func(i int) (int, bool) {
		j := next[i]
		if j >= n {
			return 0, false
		}
		lo, hi := start[i], start[next[j]]
		if hi-lo > t.maxTokenLen {
			return 0, false
		}
		r, ok := t.ranks[piece[lo:hi]]
		return r, ok
	}
	h := make(pairHeap, 0, n)
	for i := 0; i+1 < n; i++ {
		if r, ok := rankOf(i); ok {
			h = append(h, pairEntry{rank: r, start: start[i], part: i})
		}
	}
	heap.Init(&h)
	for h.Len() > 0 {
		e := heap.Pop(&h).(pairEntry)
		if e.ver != ver[e.part] || next[e.part] >= n {
			continue // a part it joined has changed since it was pushed
		}
		i := e.part
		gone := next[i]
		next[i] = next[gone]
		prev[next[gone]] = i
		ver[gone]++ // its own pair entries are dead
		ver[i]++
		if r, ok := rankOf(i); ok {
			heap.Push(&h, pairEntry{rank: r, start: start[i], part: i, ver: ver[i]})
		}
		if p := prev[i]; p >= 0 {
			ver[p]++
			if r, ok := rankOf(p); ok {
				heap.Push(&h, pairEntry{rank: r, start: start[p], part: p, ver: ver[p]})
			}
		}
	}
	for i := 0; i < n; i = next[i] {
		out = append(out, t.ranks[piece[start[i]:start[next[i]]]])
	}
	return out
}
