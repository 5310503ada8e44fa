package lora

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/qwen-tune/qwen-tune/checkpoints"
	"github.com/qwen-tune/qwen-tune/data"
	"github.com/qwen-tune/qwen-tune/model"
)

// TrainBenchOptions are the settings of MeasureTraining.
type TrainBenchOptions struct {
	Batch, Seq int    // sequences per step and tokens per sequence (every token trained)
	Steps      int    // steps timed, after one untimed warm-up step
	LoRA       Config // r, alpha, dropout, targets
	Seed       uint64 // the random token ids
}

// TrainThroughput is what MeasureTraining reports.
type TrainThroughput struct {
	Batch   int     `json:"batch"`
	Seq     int     `json:"seq"`
	Steps   int     `json:"steps"`
	StepSec float64 `json:"step_s"` // mean of the timed steps
	// TokensPerSec counts the tokens a step processes, Batch x Seq (Batch x (Seq - 1) of
	// them are predicted)
	TokensPerSec float64 `json:"tokens_per_s"`
	// the trained parameters and their float32 state: values, gradients, two AdamW moments
	LoRAParams int   `json:"lora_params"`
	StateBytes int64 `json:"optimizer_state_bytes"`
	// FLOPsPerToken counts the matrix products of a step: forward and input gradients of
	// every frozen projection (2 + 2 per weight), forward, input and weight gradients of every
	// LoRA matrix (2 + 2 + 2 per weight), and causal attention (forward 4 (T+1)/2 per width
	// per layer, backward twice that).
	FLOPsPerToken float64 `json:"flops_per_token"`
	GFLOPs        float64 `json:"gflop_per_s"`
	PeakRSSBytes  int64   `json:"peak_rss_bytes"`
	Loss          float64 `json:"last_loss"`

	// DeviceState is, with the optimizer on a device, the memory of the trained parameters
	// and their optimizer state by kind (Trainer.DeviceMemory) after the last step
	DeviceState []model.MemoryPart `json:"device_state,omitempty"`
}

// MeasureTraining times LoRA steps of m with Qwen's optimizer settings on random token ids.
// The adapter is applied to m for the measurement and the model is left adapted: measure on a
// model opened for it.
func MeasureTraining(ctx context.Context, m *model.Model, o TrainBenchOptions) (res TrainThroughput, err error) {
	res = TrainThroughput{Batch: o.Batch, Seq: o.Seq, Steps: o.Steps}
	if o.Batch < 1 || o.Seq < 2 || o.Steps < 1 {
		return res, fmt.Errorf("lora: benchmark of batch %d, sequence %d, %d steps: need at least 1, 2 and 1", o.Batch, o.Seq, o.Steps)
	}
	cfg := DefaultTrainConfig()
	cfg.LoRA, cfg.BatchSize, cfg.MaxLen, cfg.Steps, cfg.Epochs = o.LoRA, o.Batch, o.Seq, o.Steps+1, 0
	a, err := Apply(m, cfg.LoRA, o.Seed)
	if err != nil {
		return res, err
	}
	r := rand.New(rand.NewPCG(o.Seed, 1))
	seqs := make([]data.Sequence, o.Batch)
	for i := range seqs {
		ids := make([]int, o.Seq)
		for j := range ids {
			ids[j] = r.IntN(m.Config.VocabSize)
		}
		seqs[i] = data.Sequence{IDs: ids, Labels: ids, Source: "random"}
	}
	tr, err := NewTrainer(m, a, a.Params(), cfg, seqs, nil, 0)
	if err != nil {
		return res, err
	}
	defer func() {
		if cerr := tr.Close(); err == nil {
			err = cerr
		}
	}()
	for _, p := range a.Params() {
		res.LoRAParams += p.Value.Size()
	}
	res.StateBytes = int64(res.LoRAParams) * 4 * 4
	res.FLOPsPerToken = trainFLOPs(m, a, o.Seq)
	var timed time.Duration
	for s := 0; s <= o.Steps; s++ {
		start := time.Now()
		st, err := tr.TrainStep(ctx)
		if err != nil {
			return res, err
		}
		if s > 0 {
			timed += time.Since(start)
		}
		res.Loss = st.Loss
	}
	res.DeviceState = tr.DeviceMemory()
	res.StepSec = timed.Seconds() / float64(o.Steps)
	res.TokensPerSec = float64(o.Batch*o.Seq) / res.StepSec
	res.GFLOPs = res.FLOPsPerToken * res.TokensPerSec / 1e9
	res.PeakRSSBytes = model.PeakRSS()
	return res, nil
}

// trainFLOPs is TrainThroughput.FLOPsPerToken for sequences of seq tokens.
func trainFLOPs(m *model.Model, a *Adapter, seq int) float64 {
	c := m.Config
	frozen := float64(c.VocabSize * c.HiddenSize) // lm_head
	for _, l := range checkpoints.BlockLinears {
		out, in := l.Shape(c)
		frozen += float64(out*in) * float64(c.NumHiddenLayers)
	}
	lora := 0.0
	for _, p := range a.Params() {
		lora += float64(p.Value.Size())
	}
	attn := 3 * 4 * float64(seq+1) / 2 * float64(c.HiddenSize) * float64(c.NumHiddenLayers)
	return 4*frozen + 6*lora + attn
}
