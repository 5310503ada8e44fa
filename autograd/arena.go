package autograd

import (
	"cmp"
	"fmt"
	"slices"
)

// Activation memory planning: every buffer a compiled program needs is known before it runs,
// with the first and last instruction that touch it, so all of them are placed at offsets of
// one arena allocated once. Two buffers may share bytes only when their lifetimes are
// disjoint. Placement is greedy by size: the largest buffer first (of one size, the
// longest-lived first, so that a training program's marks stack under the block values of
// their size instead of between them; or the earliest first, or the latest to die first:
// the smallest of the three arenas is kept), each at the lowest offset
// where it overlaps no already placed buffer of an intersecting lifetime (the smallest such
// gap that fits). For a transformer's layers, which repeat the same lifetimes, the arena comes
// out at (or within a few buffers' alignment of) the most bytes ever live at once, the bound
// no placement can beat; a free list that hands out whole released buffers keeps one buffer
// per size class alive instead.

// ArenaRequest is one buffer: Bytes, live from node First to node Last inclusive (a buffer
// written by node i and one last read by node i are both live at i).
type ArenaRequest struct {
	Bytes       int64
	First, Last int
}

func (r ArenaRequest) overlaps(o ArenaRequest) bool { return r.First <= o.Last && o.First <= r.Last }

// ArenaAlign is the alignment of every offset (cuBLAS and the 16-byte vector loads need far
// less; 256 matches what cuMemAlloc returns).
const ArenaAlign = 256

// ArenaBytes is what a buffer of bytes takes in an arena aligned to align (at least one
// alignment unit, for a buffer of none).
func ArenaBytes(bytes, align int64) int64 { return (max(bytes, 1) + align - 1) / align * align }

// PlanArena returns an offset per request (multiples of align) and the arena's size: the
// smallest of the greedy placements in a few orders of the requests (arenaOrders).
func PlanArena(reqs []ArenaRequest, align int64) (offsets []int64, size int64) {
	for k, less := range arenaOrders {
		o, n := placeInOrder(reqs, align, less)
		if k == 0 || n < size {
			offsets, size = o, n
		}
	}
	return offsets, size
}

// arenaOrders are the orders placeInOrder tries, each the largest buffer first: of one size,
// the longest-lived first (a training program's marks stack under the block values of their
// size), the earliest first, or the latest to die first.
var arenaOrders = []func(a, b ArenaRequest) int{
	func(a, b ArenaRequest) int { return cmp.Compare(b.Last-b.First, a.Last-a.First) },
	func(a, b ArenaRequest) int { return cmp.Compare(a.First, b.First) },
	func(a, b ArenaRequest) int { return cmp.Compare(b.Last, a.Last) },
}

// placeInOrder places the requests greedily, the largest first and those of one size in the
// order less gives, each at the lowest offset where it overlaps no already placed buffer of
// an intersecting lifetime (the smallest such gap that fits).
func placeInOrder(reqs []ArenaRequest, align int64, less func(a, b ArenaRequest) int) (offsets []int64, size int64) {
	need := make([]int64, len(reqs))
	order := make([]int, len(reqs))
	for i, r := range reqs {
		need[i], order[i] = ArenaBytes(r.Bytes, align), i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		if c := cmp.Compare(reqs[b].Bytes, reqs[a].Bytes); c != 0 {
			return c
		}
		if c := less(reqs[a], reqs[b]); c != 0 {
			return c
		}
		return reqs[a].First - reqs[b].First
	})
	offsets = make([]int64, len(reqs))
	type span struct{ lo, hi int64 }
	var busy []span
	for x, i := range order {
		busy = busy[:0]
		for _, j := range order[:x] { // the buffers placed so far
			if reqs[i].overlaps(reqs[j]) {
				busy = append(busy, span{offsets[j], offsets[j] + need[j]})
			}
		}
		slices.SortFunc(busy, func(a, b span) int { return cmp.Compare(a.lo, b.lo) })
		// the smallest gap between busy spans that fits; else after the last one
		best, bestGap, end := int64(-1), int64(-1), int64(0)
		for _, s := range busy {
			if gap := s.lo - end; gap >= need[i] && (bestGap < 0 || gap < bestGap) {
				best, bestGap = end, gap
			}
			end = max(end, s.hi)
		}
		if best < 0 {
			best = end
		}
		offsets[i] = best
		size = max(size, best+need[i])
	}
	return offsets, size
}

// CheckArena verifies a placement: every buffer inside the arena, aligned, and no two
// buffers with intersecting lifetimes sharing a byte.
func CheckArena(reqs []ArenaRequest, offsets []int64, size, align int64) error {
	if len(offsets) != len(reqs) {
		return fmt.Errorf("autograd: arena plan of %d offsets for %d buffers", len(offsets), len(reqs))
	}
	for i, r := range reqs {
		if offsets[i] < 0 || offsets[i]%align != 0 || offsets[i]+r.Bytes > size {
			return fmt.Errorf("autograd: arena buffer %d (%d bytes at %d) outside an arena of %d bytes or unaligned", i, r.Bytes, offsets[i], size)
		}
	}
	// buffers by offset: each against the ones starting inside it
	idx := make([]int, len(reqs))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int { return cmp.Compare(offsets[a], offsets[b]) })
	for x, i := range idx {
		for _, j := range idx[x+1:] {
			if offsets[j] >= offsets[i]+reqs[i].Bytes {
				break
			}
			if reqs[i].Bytes > 0 && reqs[j].Bytes > 0 && reqs[i].overlaps(reqs[j]) {
				return fmt.Errorf("autograd: arena buffers %d and %d share bytes while both live (nodes %d-%d and %d-%d)", i, j, reqs[i].First, reqs[i].Last, reqs[j].First, reqs[j].Last)
			}
		}
	}
	return nil
}

// PrefillChunk is how many queries of a prefill the GPU attention scores at once.
const PrefillChunk = 128

// MaxCacheScratch bounds the score scratch of a chunk after a long cache (elements per head).
const MaxCacheScratch = 32768

// PrefillScoreElems is the fp32 score scratch (elements) of the GPU attention for t new
// tokens: one chunk of queries against every key, at least MaxCacheScratch per head.
func PrefillScoreElems(heads, t int) int64 {
	return int64(heads) * int64(max(min(t, PrefillChunk)*t, MaxCacheScratch))
}

// PeakLive is the most bytes (each buffer aligned up to align) live at one node, the lower
// bound of any placement's arena, and the first node where so many are live.
func PeakLive(reqs []ArenaRequest, align int64) (at int, live int64) {
	delta := map[int]int64{}
	for _, r := range reqs {
		b := ArenaBytes(r.Bytes, align)
		delta[r.First] += b
		delta[r.Last+1] -= b
	}
	nodes := make([]int, 0, len(delta))
	for n := range delta {
		nodes = append(nodes, n)
	}
	slices.Sort(nodes)
	var cur int64
	for _, n := range nodes {
		if cur += delta[n]; cur > live {
			at, live = n, cur
		}
	}
	return at, live
}

// LiveAt is the requests live at node at, the largest first (ties: the earliest first).
func LiveAt(reqs []ArenaRequest, at int) []int {
	var idx []int
	for i, r := range reqs {
		if r.First <= at && at <= r.Last {
			idx = append(idx, i)
		}
	}
	slices.SortStableFunc(idx, func(a, b int) int { return cmp.Compare(reqs[b].Bytes, reqs[a].Bytes) })
	return idx
}
