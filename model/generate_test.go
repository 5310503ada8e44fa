package model

import (
	"context"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/qwen-tune/qwen-tune/checkpoints"
	"github.com/qwen-tune/qwen-tune/internal/golden"
	"github.com/qwen-tune/qwen-tune/internal/refmath"
)

// TestGoldenGreedy decodes greedily with the KV cache and compares with transformers.
func TestGoldenGreedy(t *testing.T) {
	want := golden.ReadGreedy(t)
	m, _ := loadGolden(t)
	s := m.NewSession(4)
	defer s.Close()
	sampler := &Sampler{Greedy: true, RepetitionPenalty: 1}
	got, reason, err := s.Generate(context.Background(), want.Prompt, GenerateOptions{MaxNewTokens: len(want.Continuation), Sampler: sampler}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if reason != StopLength || !slices.Equal(got, want.Continuation) {
		t.Fatalf("greedy continuation %v (%s), golden %v", got, reason, want.Continuation)
	}
}

// TestCachedDecodingMatchesFullForward: logits from prefill + one-token steps (and a
// multi-token chunk after a cache) equal the rows of one forward over the whole sequence.
func TestCachedDecodingMatchesFullForward(t *testing.T) {
	m, gb := loadGolden(t)
	seq := gb.IDs[:19] // row 0, all real tokens
	full, err := m.NewRunner(1, len(seq), Inference, false, false)
	if err != nil {
		t.Fatal(err)
	}
	defer full.Close()
	full.SetBatch(seq, nil, nil)
	if err := full.Run(); err != nil {
		t.Fatal(err)
	}
	vocab := m.Config.VocabSize
	want := append([]float32(nil), full.Logits()...)
	s := m.NewSession(2) // grows as it goes
	defer s.Close()
	check := func(pos int, got []float32) {
		t.Helper()
		// measured 0 (the same float32 sums); 1e-6 leaves room for a reordered sum only
		if e := relDiff(got, want[pos*vocab:(pos+1)*vocab]); e > 1e-6 {
			t.Errorf("position %d: cached logits differ from the full forward by %.3g", pos, e)
		}
	}
	ids := make([]int, len(seq))
	for i, id := range seq {
		ids[i] = int(id)
	}
	logits, err := s.Feed(ids[:6])
	if err != nil {
		t.Fatal(err)
	}
	check(5, logits)
	for p := 6; p < 12; p++ {
		if logits, err = s.Feed(ids[p : p+1]); err != nil {
			t.Fatal(err)
		}
		check(p, logits)
	}
	if logits, err = s.Feed(ids[12:]); err != nil { // a chunk after a cache: offset causal mask
		t.Fatal(err)
	}
	check(len(ids)-1, logits)
}

// randomModel is an in-memory float32 model with weights large enough that attention is far
// from uniform, so positional effects (rotary base, LogN) show in the logits.
func randomModel(cfg *checkpoints.Config, seed uint64) *Model {
	rng := rand.New(rand.NewPCG(seed, 7))
	var tensors []checkpoints.Tensor
	for _, s := range checkpoints.ModelTensors(cfg, nil) {
		v := make([]float32, s.NumElements())
		for i := range v {
			if len(s.Shape) == 1 {
				v[i] = float32(1 + 0.1*rng.NormFloat64())
			} else {
				v[i] = float32(rng.NormFloat64() / math.Sqrt(float64(s.Shape[1])) * 1.5)
			}
		}
		tensors = append(tensors, checkpoints.F32Tensor(s.Name, s.Shape, v))
	}
	m, err := fromTensors(cfg, tensors)
	if err != nil {
		panic(err)
	}
	return m
}

func shortContextConfig() *checkpoints.Config {
	return &checkpoints.Config{
		Architectures: []string{checkpoints.Architecture}, VocabSize: 64, HiddenSize: 32, NumHiddenLayers: 2,
		NumAttentionHeads: 2, KVChannels: 16, IntermediateSize: 96, LayerNormEpsilon: 1e-6, RotaryEmbBase: 10000,
		RotaryPct: 1, SeqLength: 16, UseDynamicNTK: true, UseLogNAttn: true, NoBias: true,
	}
}

// refForward evaluates QWEN.md's formulas directly in float64, one position at a time, and
// returns the logits of every position. base is the rotary base; logn applies LogN scaling
// for queries when the sequence is longer than seq_length.
func refForward(m *Model, ids []int, base float64, logn bool) [][]float64 {
	c := m.Config
	h, nh, d := c.HiddenSize, c.NumAttentionHeads, c.KVChannels
	w := func(p *Param) []float64 {
		f := p.Value.Data().([]float32)
		out := make([]float64, len(f))
		for i, v := range f {
			out[i] = float64(v)
		}
		return out
	}
	matvec := func(W []float64, x []float64, rows int) []float64 {
		y := make([]float64, rows)
		for r := range y {
			for k, v := range x {
				y[r] += W[r*len(x)+k] * v
			}
		}
		return y
	}
	rms := func(x, g []float64) []float64 {
		var ss float64
		for _, v := range x {
			ss += v * v
		}
		r := 1 / math.Sqrt(ss/float64(len(x))+c.LayerNormEpsilon)
		y := make([]float64, len(x))
		for i := range x {
			y[i] = x[i] * r * g[i]
		}
		return y
	}
	rotate := func(x []float64, pos int) {
		for hd := 0; hd < nh; hd++ {
			v := x[hd*d : (hd+1)*d]
			for i := 0; i < d/2; i++ {
				a := float64(pos) * math.Pow(base, -2*float64(i)/float64(d))
				x1, x2 := v[i], v[i+d/2]
				v[i], v[i+d/2] = x1*math.Cos(a)-x2*math.Sin(a), x2*math.Cos(a)+x1*math.Sin(a)
			}
		}
	}
	n := len(ids)
	xs := make([][]float64, n)
	emb := w(m.Embed.(*Table).Weight)
	for t, id := range ids {
		xs[t] = append([]float64(nil), emb[id*h:(id+1)*h]...)
	}
	for _, b := range m.Blocks {
		qkvW, qkvB := w(b.QKV.(*Dense).Weight), w(b.QKV.(*Dense).Bias)
		qs, ks, vs := make([][]float64, n), make([][]float64, n), make([][]float64, n)
		for t := range xs {
			y := matvec(qkvW, rms(xs[t], w(b.LN1)), 3*nh*d)
			for i := range y {
				y[i] += qkvB[i]
			}
			qs[t], ks[t], vs[t] = y[:nh*d], y[nh*d:2*nh*d], y[2*nh*d:]
			rotate(qs[t], t)
			rotate(ks[t], t)
			if logn && n > c.SeqLength && t+1 > c.SeqLength {
				f := math.Log(float64(t+1)) / math.Log(float64(c.SeqLength))
				for i := range qs[t] {
					qs[t][i] *= f
				}
			}
		}
		for t := range xs {
			att := make([]float64, nh*d)
			for hd := 0; hd < nh; hd++ {
				s := make([]float64, t+1)
				for j := range s {
					for i := 0; i < d; i++ {
						s[j] += qs[t][hd*d+i] * ks[j][hd*d+i]
					}
					s[j] /= math.Sqrt(float64(d))
				}
				refmath.Softmax(s)
				for j := range s {
					for i := 0; i < d; i++ {
						att[hd*d+i] += s[j] * vs[j][hd*d+i]
					}
				}
			}
			proj := matvec(w(b.Out.(*Dense).Weight), att, h)
			for i := range proj {
				xs[t][i] += proj[i]
			}
			x2 := rms(xs[t], w(b.LN2))
			mw := c.MLPWidth()
			up, gate := matvec(w(b.Up.(*Dense).Weight), x2, mw), matvec(w(b.Gate.(*Dense).Weight), x2, mw)
			for i := range up {
				up[i] *= gate[i] / (1 + math.Exp(-gate[i]))
			}
			down := matvec(w(b.Down.(*Dense).Weight), up, h)
			for i := range down {
				xs[t][i] += down[i]
			}
		}
	}
	out := make([][]float64, n)
	for t := range xs {
		out[t] = matvec(w(m.Head.(*Dense).Weight), rms(xs[t], w(m.Norm)), c.VocabSize)
	}
	return out
}

var relDiff64 = refmath.RelDiff[float32, float64]

func TestNTKAlpha(t *testing.T) {
	for _, c := range []struct {
		n    int
		want float64
	}{{1, 1}, {4096, 1}, {8192, 1}, {8193, 3}, {16384, 3}, {16385, 7}, {32767, 7}} {
		if got := NTKAlpha(c.n, 8192); got != c.want {
			t.Errorf("NTKAlpha(%d, 8192) = %g, want %g", c.n, got, c.want)
		}
	}
	if got, want := NTKBase(10000, 3, 128), 10000*math.Pow(3, 128.0/126); math.Abs(got-want) > 1e-9 { // measured 0
		t.Errorf("NTKBase = %g, want %g", got, want)
	}
}

// TestLongContextScaling: a prompt beyond seq_length (40 tokens, seq_length 16) gets the
// dynamic-NTK base at prefill (alpha 7) and LogN query scaling; decoding keeps that base.
// Logits are compared with refForward evaluating QWEN.md's formulas directly.
func TestLongContextScaling(t *testing.T) {
	cfg := shortContextConfig()
	m := randomModel(cfg, 3)
	rng := rand.New(rand.NewPCG(5, 5))
	ids := make([]int, 44)
	for i := range ids {
		ids[i] = rng.IntN(cfg.VocabSize)
	}
	const prompt = 40
	alpha := NTKAlpha(prompt, cfg.SeqLength)
	if alpha != 7 {
		t.Fatalf("alpha for 40 tokens over 16 = %g, want 7", alpha)
	}
	base := NTKBase(cfg.RotaryEmbBase, alpha, cfg.KVChannels)
	ref := refForward(m, ids, base, true)
	plain := refForward(m, ids, cfg.RotaryEmbBase, false)

	s := m.NewSession(8)
	defer s.Close()
	logits, err := s.Feed(ids[:prompt])
	if err != nil {
		t.Fatal(err)
	}
	for p := prompt - 1; ; p++ {
		if e := relDiff64(logits, ref[p]); e > 5e-6 { // measured 4.1e-7
			t.Errorf("position %d: logits differ from the NTK+LogN reference by %.3g", p, e)
		}
		if e := relDiff64(logits, plain[p]); e < 1e-2 {
			t.Errorf("position %d: NTK+LogN changes the logits by only %.3g: the test cannot tell them apart", p, e)
		}
		if p+1 == len(ids) {
			break
		}
		if logits, err = s.Feed(ids[p+1 : p+2]); err != nil {
			t.Fatal(err)
		}
	}

	// Within seq_length nothing is scaled: the same model matches the plain reference.
	s2 := m.NewSession(8)
	defer s2.Close()
	short, err := s2.Feed(ids[:12])
	if err != nil {
		t.Fatal(err)
	}
	if e := relDiff64(short, refForward(m, ids[:12], cfg.RotaryEmbBase, false)[11]); e > 3e-6 { // measured 2.3e-7
		t.Errorf("short prompt: logits differ from the plain reference by %.3g", e)
	}
}

// TestEvaluatorMatchesGoldenLoss: scoring the golden rows one at a time and pooling the sums
// gives the batch's token-weighted loss.
func TestEvaluatorMatchesGoldenLoss(t *testing.T) {
	m, gb := loadGolden(t)
	e := m.NewEvaluator()
	defer e.Close()
	var sum float64
	var n int
	for b := 0; b < gb.Batch; b++ {
		var ids, labels []int
		for i := 0; i < gb.Seq; i++ {
			if gb.Mask[b*gb.Seq+i] {
				ids = append(ids, int(gb.IDs[b*gb.Seq+i]))
				labels = append(labels, int(gb.Labels[b*gb.Seq+i]))
			}
		}
		s, k, err := e.Score(ids, labels)
		if err != nil {
			t.Fatal(err)
		}
		sum += s
		n += k
	}
	want := float64(gb.Floats(t, "loss")[0])
	if d := math.Abs(sum/float64(n) - want); d > 3e-6 { // measured 2.5e-7
		t.Errorf("pooled loss %.8f, golden %.8f", sum/float64(n), want)
	}
}

// TestSessionReusesPrefix: continuing a conversation computes only the new tokens, and the
// logits equal those of a fresh session over the whole prompt.
func TestSessionReusesPrefix(t *testing.T) {
	m, gb := loadGolden(t)
	ids := make([]int, 20)
	for i := range ids {
		ids[i] = int(gb.IDs[i])
	}
	s := m.NewSession(4)
	defer s.Close()
	if _, err := s.Continue(ids[:9]); err != nil {
		t.Fatal(err)
	}
	got, err := s.Continue(ids)
	if err != nil {
		t.Fatal(err)
	}
	fresh := m.NewSession(4)
	defer fresh.Close()
	want, err := fresh.Continue(ids)
	if err != nil {
		t.Fatal(err)
	}
	if e := relDiff(got, want); e > 1e-6 { // measured 0
		t.Errorf("logits after reusing the prefix differ by %.3g", e)
	}
	// A prompt that diverges early recomputes from the divergence.
	other := append(append([]int(nil), ids[:3]...), 7, 8, 9)
	got, err = s.Continue(other)
	if err != nil {
		t.Fatal(err)
	}
	fresh.Reset()
	want, err = fresh.Continue(other)
	if err != nil {
		t.Fatal(err)
	}
	if e := relDiff(got, want); e > 1e-6 || len(s.Tokens()) != len(other) { // measured 0
		t.Errorf("after a divergent prompt: difference %.3g, %d tokens cached", e, len(s.Tokens()))
	}
}

func TestGenerateCancelled(t *testing.T) {
	m, _ := loadGolden(t)
	s := m.NewSession(4)
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	n := 0
	out, reason, err := s.Generate(ctx, []int{1, 2, 3}, GenerateOptions{MaxNewTokens: 100, Sampler: &Sampler{Greedy: true, RepetitionPenalty: 1}}, func(int) error {
		if n++; n == 3 {
			cancel()
		}
		return nil
	})
	if err != nil || reason != StopCancelled || len(out) != 3 {
		t.Fatalf("got %d tokens, reason %q, error %v; want 3 tokens, cancelled", len(out), reason, err)
	}
	stop := []int{out[0]}
	s.Reset()
	out, reason, err = s.Generate(context.Background(), []int{1, 2, 3}, GenerateOptions{MaxNewTokens: 100, Stop: stop, Sampler: &Sampler{Greedy: true, RepetitionPenalty: 1}}, nil)
	if err != nil || reason != StopToken || len(out) != 0 {
		t.Fatalf("stop id as first token: %v %q %v", out, reason, err)
	}
}
