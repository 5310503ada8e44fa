package autograd

// Blocked attention (flash attention on the CPU) for the Attention op, per (row b, head h):
//
//	forward, one task per block of flashRows queries [t0, t1):
//	  Qs = c Q[t0:t1] / sqrt(D)                                 [rows, D]
//	  for each key block [j0, j1) a query of the block may see:
//	    S = Qs K[j0:j1]^T (masked: -inf)                        [rows, keys]   GEMM
//	    m' = max(m, rowmax S); P = exp(S - m'); l = l e^(m-m') + rowsum P
//	    acc = acc e^(m-m') + P V[j0:j1]                         [rows, D]      GEMM
//	  out = acc / l, lse = m + log l
//	backward, one task per (b, h), key blocks outer, query blocks inner:
//	  P = exp(Qs K^T - lse); dV += P^T G; dP = G V^T; dS = P (dP - D)
//	  dQs += dS K; dK += dS^T Qs; at the end dQ = c dQs / sqrt(D)
//
// Key blocks no query of the block can see (beyond the causal limit, all padding, other
// packed segments) are skipped, so a packed row costs what its segments cost.

import (
	"fmt"
	"math"
	"sync"

	"github.com/qwen-tune/qwen-tune/internal/vecmath"

	"gorgonia.org/tensor"
)

// Block sizes: queries per forward task, keys per step of the online softmax.
const (
	flashRows = 64
	flashKeys = 64
)

// flash is one execution's attention data for every (b, h). Queries, keys and values are
// [B, ., H, D] with the keys and values strided by stride positions per row (the cache's
// capacity, or T).
type flash[T Float] struct {
	st         *Step
	nt, nh, d  int
	hd, stride int
	q, k, v    []T
	masked     bool // a key mask or packed segments: causality is not the only rule
	scale      float64
}

func newFlash[T Float](q []T, k, v []T, nt, nh, d, stride int, st *Step) *flash[T] {
	return &flash[T]{st: st, nt: nt, nh: nh, d: d, hd: nh * d, stride: stride, q: q, k: k, v: v,
		masked: st.KeyMask != nil || st.Segments != nil, scale: 1 / math.Sqrt(float64(d))}
}

// keyOff is the offset of key (or value) j of row b, head h.
func (f *flash[T]) keyOff(b, h, j int) int { return (b*f.stride+j)*f.hd + h*f.d }

// queryOff is the offset of query t of row b, head h (also its place in the merged output).
func (f *flash[T]) queryOff(b, h, t int) int { return (b*f.nt+t)*f.hd + h*f.d }

// scaled writes c_t q_t / sqrt(D) of queries [t0, t1) into qs [rows, D] and c_t / sqrt(D) into c.
func (f *flash[T]) scaled(b, h, t0, t1 int, qs, c []T) {
	for r := range t1 - t0 {
		ct := T(f.scale * f.st.logn(f.st.Past+t0+r))
		c[r] = ct
		src := f.q[f.queryOff(b, h, t0+r):][:f.d]
		dst := qs[r*f.d:][:f.d]
		for i, x := range src {
			dst[i] = ct * x
		}
	}
}

// sees reports whether any query of [t0, t1) may see a key of [j0, j1) under the key mask
// and the segments (causality is the caller's loop bound).
func (f *flash[T]) sees(b, t0, t1, j0, j1 int) bool {
	if !f.masked {
		return true
	}
	st := f.st
	someReal := st.KeyMask == nil
	for j := j0; j < j1 && !someReal; j++ {
		someReal = st.keyOK(b, j)
	}
	if !someReal || st.Segments == nil {
		return someReal
	}
	// Disjoint segment-id ranges share no segment.
	seg := st.Segments[b*st.Seq:][:st.Seq]
	qlo, qhi := minMax(seg[t0:t1])
	klo, khi := minMax(seg[j0:j1])
	return qlo <= khi && klo <= qhi
}

func minMax(s []int32) (lo, hi int32) {
	lo, hi = s[0], s[0]
	for _, x := range s[1:] {
		lo, hi = min(lo, x), max(hi, x)
	}
	return lo, hi
}

// mask sets the scores s [rows, j1-j0] of keys a query may not see to -inf: beyond its
// position, padding, another segment.
func (f *flash[T]) mask(s []T, b, t0, t1, j0, j1 int) {
	st := f.st
	nk := j1 - j0
	inf := T(math.Inf(-1))
	for r := range t1 - t0 {
		row := s[r*nk : (r+1)*nk]
		t := t0 + r
		last := st.Past + t // the last key this query sees
		if !f.masked {
			if last < j1-1 {
				for j := max(last+1-j0, 0); j < nk; j++ {
					row[j] = inf
				}
			}
			continue
		}
		for j := range row {
			if jj := j0 + j; jj > last || !st.keyOK(b, jj) || !st.sameSegment(b, t, jj) {
				row[j] = inf
			}
		}
	}
}

// flashScratch is one task's working memory, recycled across tasks and calls. rows is the
// number of queries it holds (a block in the forward, all of a head's in the backward).
type flashScratch[T Float] struct {
	qs, c, acc, m, l []T // [rows, D], [rows], [rows, D], [rows], [rows]
	s, dp            []T // [flashRows, flashKeys]
}

var flashScratchPool sync.Pool

func getScratch[T Float](rows, d int) *flashScratch[T] {
	w, ok := flashScratchPool.Get().(*flashScratch[T])
	if !ok || len(w.qs) < rows*d || len(w.c) < rows {
		w = &flashScratch[T]{qs: make([]T, rows*d), c: make([]T, rows), acc: make([]T, rows*d), m: make([]T, rows),
			l: make([]T, rows), s: make([]T, flashRows*flashKeys), dp: make([]T, flashRows*flashKeys)}
	}
	return w
}

// forward computes queries [t0, t1) of (b, h): their rows of out and their lse.
func (f *flash[T]) forward(b, h, t0, t1 int, out, lse []T) {
	w := getScratch[T](flashRows, f.d)
	defer flashScratchPool.Put(w)
	rows, d := t1-t0, f.d
	f.scaled(b, h, t0, t1, w.qs, w.c)
	acc, m, l := w.acc[:rows*d], w.m[:rows], w.l[:rows]
	clear(acc)
	clear(l)
	for r := range m {
		m[r] = T(math.Inf(-1))
	}
	keys := f.st.Past + t1 // the last query sees keys 0..keys-1
	for j0 := 0; j0 < keys; j0 += flashKeys {
		j1 := min(j0+flashKeys, keys)
		if !f.sees(b, t0, t1, j0, j1) {
			continue
		}
		nk := j1 - j0
		s := w.s[:rows*nk]
		gemm(false, true, rows, nk, d, 1, w.qs, d, f.k[f.keyOff(b, h, j0):], f.hd, 0, s, nk)
		f.mask(s, b, t0, t1, j0, j1)
		for r := range rows {
			row := s[r*nk : (r+1)*nk]
			mx := max(m[r], rowMax(row))
			if math.IsInf(float64(mx), -1) { // nothing visible yet: contributes nothing
				clear(row)
				continue
			}
			sum := expSub(row, mx)
			if alpha := expOne(m[r] - mx); alpha != 1 {
				for i := range acc[r*d : (r+1)*d] {
					acc[r*d+i] *= alpha
				}
				l[r] *= alpha
			}
			m[r], l[r] = mx, l[r]+sum
		}
		gemm(false, false, rows, d, nk, 1, s, nk, f.v[f.keyOff(b, h, j0):], f.hd, 1, acc, d)
	}
	for r := range rows {
		t := t0 + r
		dst := out[f.queryOff(b, h, t):][:d]
		lt := &lse[(b*f.nh+h)*f.nt+t]
		if l[r] == 0 {
			*lt = T(math.Inf(-1)) // dst stays zero
			continue
		}
		inv := 1 / l[r]
		for i := range dst {
			dst[i] = acc[r*d+i] * inv
		}
		*lt = m[r] + T(math.Log(float64(l[r])))
	}
}

// expSub replaces every x of row by exp(x - m) and returns their sum (exp(-inf) = 0).
func expSub[T Float](row []T, m T) T {
	switch r := any(row).(type) {
	case []float32:
		return T(expSub32(r, float32(m)))
	case []float64:
		var sum float64
		for i, x := range r {
			e := math.Exp(x - float64(m))
			r[i] = e
			sum += e
		}
		return T(sum)
	}
	return 0
}

func expSub32(row []float32, m float32) float32 { return float32(vecmath.ExpSum(row, row, m)) }

// rowMax is the largest element of row (NaN if there is one; -Inf for none).
func rowMax[T Float](row []T) T {
	if r, ok := any(row).([]float32); ok {
		return T(vecmath.Max(r))
	}
	m := T(math.Inf(-1))
	for _, x := range row {
		m = max(m, x)
	}
	return m
}

// expOne is exp(x) at the precision of T.
func expOne[T Float](x T) T {
	if _, ok := any(x).(float32); ok {
		return T(vecmath.Exp32(float32(x)))
	}
	return T(math.Exp(float64(x)))
}

// attnForward runs the blocked forward over every (b, h, query block) in parallel; it
// returns the merged-head output [B*T, H*D] and the lse [B, H, T].
func attnForward[T Float](q, k, v *tensor.Dense, layer int, st *Step, p *pool) (*tensor.Dense, []T, error) {
	s := q.Shape()
	nb, nt, nh, d := s[0], s[1], s[2], s[3]
	kd, vd, stride, err := kvSource[T](k, v, layer, st)
	if err != nil {
		return nil, nil, err
	}
	f := newFlash(q.Data().([]T), kd, vd, nt, nh, d, stride, st)
	out := p.get(q.Dtype(), nb*nt, nh*d)
	od := out.Data().([]T)
	lse := make([]T, nb*nh*nt)
	blocks := (nt + flashRows - 1) / flashRows
	// Later query blocks see more keys: hand them out first so the workers finish together.
	parallel(nb*nh*blocks, func(i int) {
		blk := blocks - 1 - i%blocks
		bh := i / blocks
		t0 := blk * flashRows
		f.forward(bh/nh, bh%nh, t0, min(nt, t0+flashRows), od, lse)
	})
	return out, lse, nil
}

// attnBackward returns dq, dk, dv packed as [3, B, T, H, D] from the forward's out and lse
// and the output gradient g [B*T, H*D]; one task per (b, h) owns that head's slices.
func attnBackward[T Float](q, k, v, out, g *tensor.Dense, saved any, st *Step, p *pool) (*tensor.Dense, error) {
	s := q.Shape()
	nb, nt, nh, d := s[0], s[1], s[2], s[3]
	lse, ok := saved.([]T)
	if !ok || len(lse) != nb*nh*nt {
		return nil, fmt.Errorf("autograd: AttentionGrad runs before its forward (no log-sum-exp for %v)", s)
	}
	n := nb * nt * nh * d
	grads := p.get(q.Dtype(), 3, nb, nt, nh, d)
	all := grads.Data().([]T)
	dq, dk, dv := all[:n], all[n:2*n], all[2*n:]
	f := newFlash(q.Data().([]T), k.Data().([]T), v.Data().([]T), nt, nh, d, nt, st)
	od, gd := out.Data().([]T), g.Data().([]T)
	parallel(nb*nh, func(bh int) {
		b, h := bh/nh, bh%nh
		w := getScratch[T](nt, d)
		defer flashScratchPool.Put(w)
		qs, c, dqs, dd, sb, dp := w.qs, w.c, w.acc[:nt*d], w.m, w.s, w.dp
		clear(dqs)
		for t0 := 0; t0 < nt; t0 += flashRows {
			t1 := min(nt, t0+flashRows)
			f.scaled(b, h, t0, t1, qs[t0*d:], c[t0:])
		}
		for t := range nt { // D_t = G_t . out_t
			o, gt := od[f.queryOff(b, h, t):][:d], gd[f.queryOff(b, h, t):][:d]
			var dot T
			for i := range o {
				dot += o[i] * gt[i]
			}
			dd[t] = dot
		}
		rowLSE := lse[(b*nh+h)*nt:][:nt]
		for j0 := 0; j0 < nt; j0 += flashKeys {
			j1 := min(j0+flashKeys, nt)
			nk := j1 - j0
			kOff := f.keyOff(b, h, j0)
			for t0 := j0 / flashRows * flashRows; t0 < nt; t0 += flashRows { // queries t >= j0
				t1 := min(nt, t0+flashRows)
				if !f.sees(b, t0, t1, j0, j1) {
					continue
				}
				rows := t1 - t0
				p, dps := sb[:rows*nk], dp[:rows*nk]
				gOff := f.queryOff(b, h, t0)
				gemm(false, true, rows, nk, d, 1, qs[t0*d:], d, f.k[kOff:], f.hd, 0, p, nk)
				f.mask(p, b, t0, t1, j0, j1)
				for r := range rows {
					if row := p[r*nk : (r+1)*nk]; math.IsInf(float64(rowLSE[t0+r]), -1) {
						clear(row) // a query that sees no key
					} else {
						expSub(row, rowLSE[t0+r])
					}
				}
				gemm(true, false, nk, d, rows, 1, p, nk, gd[gOff:], f.hd, 1, dv[kOff:], f.hd)    // dV += P^T G
				gemm(false, true, rows, nk, d, 1, gd[gOff:], f.hd, f.v[kOff:], f.hd, 0, dps, nk) // dP = G V^T
				for r := range rows {
					pr, dr, dt := p[r*nk:(r+1)*nk], dps[r*nk:(r+1)*nk], dd[t0+r]
					for j := range pr {
						dr[j] = pr[j] * (dr[j] - dt)
					}
				}
				gemm(false, false, rows, d, nk, 1, dps, nk, f.k[kOff:], f.hd, 1, dqs[t0*d:], d) // dQs += dS K
				gemm(true, false, nk, d, rows, 1, dps, nk, qs[t0*d:], d, 1, dk[kOff:], f.hd)    // dK += dS^T Qs
			}
		}
		for t := range nt {
			dst := dq[f.queryOff(b, h, t):][:d]
			for i := range dst {
				dst[i] = c[t] * dqs[t*d+i]
			}
		}
	})
	return grads, nil
}
