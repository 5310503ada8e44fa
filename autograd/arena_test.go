package autograd

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"testing"
)

func TestPlanArenaRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	for trial := 0; trial < 300; trial++ {
		n := 1 + rng.IntN(120)
		nodes := 1 + rng.IntN(60)
		reqs := make([]ArenaRequest, n)
		var sum int64
		for i := range reqs {
			a, b := rng.IntN(nodes), rng.IntN(nodes)
			reqs[i] = ArenaRequest{Bytes: int64(rng.IntN(1 << uint(1+rng.IntN(20)))), First: min(a, b), Last: max(a, b)}
			sum += (max(reqs[i].Bytes, 1) + ArenaAlign - 1) / ArenaAlign * ArenaAlign
		}
		offsets, size := PlanArena(reqs, ArenaAlign)
		if err := CheckArena(reqs, offsets, size, ArenaAlign); err != nil {
			t.Fatalf("trial %d: %v", trial, err)
		}
		if lb := liveBound(reqs); size < lb || size > sum {
			t.Fatalf("trial %d: arena %d bytes outside [live bound %d, sum %d]", trial, size, lb, sum)
		}
	}
}

func TestCheckArenaCatchesSharing(t *testing.T) {
	reqs := []ArenaRequest{{Bytes: 1024, First: 0, Last: 3}, {Bytes: 512, First: 3, Last: 5}, {Bytes: 512, First: 4, Last: 6}}
	// buffers 0 and 1 are both live at node 3: sharing bytes is an error
	if err := CheckArena(reqs, []int64{0, 512, 1024}, 2048, ArenaAlign); err == nil {
		t.Fatal("an overlap of live buffers passed the check")
	}
	// 0 and 2 never live together: they may share
	if err := CheckArena(reqs, []int64{0, 1024, 0}, 1536, ArenaAlign); err != nil {
		t.Fatal(err)
	}
	if err := CheckArena(reqs, []int64{0, 1024, 100}, 1536, ArenaAlign); err == nil {
		t.Fatal("an unaligned offset passed the check")
	}
	if err := CheckArena(reqs, []int64{0, 1024, 1024 + 512}, 1536, ArenaAlign); err == nil {
		t.Fatal("a buffer past the arena's end passed the check")
	}
}

// A chain where each node reads the previous node's buffer and writes a new one needs two
// buffers' worth, whatever the number of nodes.
func TestPlanArenaChain(t *testing.T) {
	var reqs []ArenaRequest
	for i := 0; i < 50; i++ {
		reqs = append(reqs, ArenaRequest{Bytes: 4096, First: i, Last: i + 1})
	}
	_, size := PlanArena(reqs, ArenaAlign)
	if size != 2*4096 || liveBound(reqs) != 2*4096 {
		t.Fatalf("chain of 50 buffers: arena %d bytes, live bound %d; want %d", size, liveBound(reqs), 2*4096)
	}
}

// prefillRequests lists the activation buffers of a prefill of t tokens through layers blocks
// of Qwen-7B's shape in the order and with the lifetimes the GPU executor records (see
// Device.Compile): the embedding's float32 rows become the residual stream, updated in place
// by every add; RMSNorm outputs, attention outputs and the MLP's branches are bf16 because
// only GEMMs read them; c_attn (with its bias) writes float32; the attention's bf16 queries
// and fp32 score chunk are scratch of its node; the projection feeding a residual add lives
// until the next RMSNorm, into which the add is fused.
func prefillRequests(t, layers int) (reqs []ArenaRequest, nodes int) {
	const hidden, qkv, mlp, heads = 4096, 3 * 4096, 11008, 32
	f32 := func(cols int) int64 { return int64(t) * int64(cols) * 4 }
	bf := func(cols int) int64 { return int64(t) * int64(cols) * 2 }
	node := 0
	next := func() int { node++; return node }
	residual := ArenaRequest{Bytes: f32(hidden), First: next()}
	pending := -1 // the request of the projection whose add fuses into the next norm
	for l := 0; l < layers; l++ {
		norm := next()
		if pending >= 0 {
			reqs[pending].Last = norm
		}
		proj := next()
		reqs = append(reqs, ArenaRequest{Bytes: bf(hidden), First: norm, Last: proj})
		attn := next()
		reqs = append(reqs, ArenaRequest{Bytes: f32(qkv), First: proj, Last: attn})
		out := next()
		reqs = append(reqs,
			ArenaRequest{Bytes: bf(hidden), First: attn, Last: out},                       // attention output
			ArenaRequest{Bytes: bf(hidden), First: attn, Last: attn},                      // bf16 queries
			ArenaRequest{Bytes: PrefillScoreElems(heads, t) * 4, First: attn, Last: attn}) // scores
		next() // the residual add, fused into the next norm
		norm2 := next()
		reqs = append(reqs, ArenaRequest{Bytes: f32(hidden), First: out, Last: norm2})
		up, gate := next(), next()
		reqs = append(reqs, ArenaRequest{Bytes: bf(hidden), First: norm2, Last: gate})
		sw := next()
		reqs = append(reqs, ArenaRequest{Bytes: bf(mlp), First: up, Last: sw}, ArenaRequest{Bytes: bf(mlp), First: gate, Last: sw})
		down := next()
		reqs = append(reqs, ArenaRequest{Bytes: bf(mlp), First: sw, Last: down})
		next() // add
		reqs = append(reqs, ArenaRequest{Bytes: f32(hidden), First: down})
		pending = len(reqs) - 1
	}
	final := next()
	reqs[pending].Last = final
	residual.Last = final
	return append(reqs, residual), final + 1
}

// The 2048-token prefill of Qwen-7B's shape: the arena is the live bound plus at most one
// small buffer.
func TestPlanArenaQwen7BPrefill(t *testing.T) {
	reqs, _ := prefillRequests(2048, 32)
	offsets, size := PlanArena(reqs, ArenaAlign)
	if err := CheckArena(reqs, offsets, size, ArenaAlign); err != nil {
		t.Fatal(err)
	}
	lb := liveBound(reqs)
	const mib = 1 << 20
	t.Logf("%d buffers: arena %.1f MiB, live bound %.1f MiB", len(reqs), float64(size)/mib, float64(lb)/mib)
	if lb != 192*mib {
		t.Fatalf("live bound %.1f MiB; the attention's residual 32 + qkv 96 + output 16 + queries 16 + scores 32 = 192 MiB", float64(lb)/mib)
	}
	if size > lb+16*mib {
		t.Fatalf("arena %.1f MiB for a live bound of %.1f MiB", float64(size)/mib, float64(lb)/mib)
	}
}

func FuzzPlanArena(f *testing.F) {
	f.Add([]byte{10, 0, 3, 200, 2, 5, 7, 1, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		var reqs []ArenaRequest
		for i := 0; i+2 < len(b) && len(reqs) < 64; i += 3 {
			a, c := int(b[i+1]%32), int(b[i+2]%32)
			reqs = append(reqs, ArenaRequest{Bytes: int64(b[i]) * 97, First: min(a, c), Last: max(a, c)})
		}
		offsets, size := PlanArena(reqs, 64)
		if err := CheckArena(reqs, offsets, size, 64); err != nil {
			t.Fatal(err)
		}
		if size < liveBound(reqs) {
			t.Fatalf("arena %d below the live bound %d", size, liveBound(reqs))
		}
	})
}

// liveBound is the most bytes live at any node: no placement of reqs needs less.
func liveBound(reqs []ArenaRequest) int64 {
	type ev struct {
		at    int
		bytes int64
	}
	var evs []ev
	for _, r := range reqs {
		evs = append(evs, ev{r.First, r.Bytes}, ev{r.Last + 1, -r.Bytes})
	}
	slices.SortFunc(evs, func(a, b ev) int { // frees first at the same node
		if a.at != b.at {
			return a.at - b.at
		}
		return cmp.Compare(a.bytes, b.bytes)
	})
	var live, best int64
	for _, e := range evs {
		live += e.bytes
		best = max(best, live)
	}
	return best
}

// TestPeakLive: the peak of a few lifetimes worked out by hand, and on random plans the
// bound every arena respects.
func TestPeakLive(t *testing.T) {
	reqs := []ArenaRequest{
		{Bytes: 1000, First: 0, Last: 2}, // 1024 aligned
		{Bytes: 512, First: 1, Last: 4},
		{Bytes: 2048, First: 3, Last: 3},
		{Bytes: 256, First: 3, Last: 5},
		{Bytes: 4096, First: 6, Last: 6}, // alone, but more than node 3's 512+2048+256
	}
	at, live := PeakLive(reqs, ArenaAlign)
	if at != 6 || live != 4096 {
		t.Errorf("peak %d bytes at node %d, want 4096 at 6", live, at)
	}
	reqs[4].Bytes = 2000 // 2048: node 3's 2816 bytes are the peak now
	if at, live = PeakLive(reqs, ArenaAlign); at != 3 || live != 512+2048+256 {
		t.Errorf("peak %d bytes at node %d, want %d at 3", live, at, 512+2048+256)
	}
	if got, want := LiveAt(reqs, 3), []int{2, 1, 3}; !slices.Equal(got, want) {
		t.Errorf("live at node 3: %v, want %v", got, want)
	}
	rng := rand.New(rand.NewPCG(8, 8))
	for trial := 0; trial < 100; trial++ {
		reqs := make([]ArenaRequest, 1+rng.IntN(80))
		for i := range reqs {
			a, b := rng.IntN(40), rng.IntN(40)
			reqs[i] = ArenaRequest{Bytes: int64(1 + rng.IntN(1<<16)), First: min(a, b), Last: max(a, b)}
		}
		at, live := PeakLive(reqs, ArenaAlign)
		aligned := make([]ArenaRequest, len(reqs))
		var sum int64
		for i, r := range reqs {
			aligned[i] = ArenaRequest{Bytes: (r.Bytes + ArenaAlign - 1) / ArenaAlign * ArenaAlign, First: r.First, Last: r.Last}
		}
		for _, i := range LiveAt(reqs, at) {
			sum += aligned[i].Bytes
		}
		_, size := PlanArena(reqs, ArenaAlign)
		if lb := liveBound(aligned); live != lb || sum != live || size < live {
			t.Fatalf("trial %d: peak %d at node %d (%d live there), bound %d, arena %d", trial, live, at, sum, lb, size)
		}
	}
}
