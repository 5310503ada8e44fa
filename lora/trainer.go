package lora

import (
	"context"
	"errors"
	"fmt"
	"math"

	"github.com/qwen-tune/qwen-tune/autograd"
	"github.com/qwen-tune/qwen-tune/data"
	"github.com/qwen-tune/qwen-tune/model"
	"github.com/qwen-tune/qwen-tune/optim"
)

// Sizes and constants of the trainer's bookkeeping.
const (
	// padMultiple: a batch is padded to a multiple of this many positions (capped at MaxLen),
	// so a run sees few distinct shapes and builds few graphs.
	padMultiple = 8
	// maxGraphs is how many compiled graphs (one per batch shape) are kept; one more frees
	// them all.
	maxGraphs = 8
	// maxDeviceGraphs is maxGraphs on an executor that runs training graphs: each holds a
	// whole step's activations in device memory, so only the graph of the current shape and
	// one more are kept.
	maxDeviceGraphs = 2
	// keptEpochOrders is how many epochs' shuffled orders are kept; one more clears them
	// (the stream only moves forward, so at most the current and the next are needed).
	keptEpochOrders = 2
	// seedMix spreads the run's seed over 64 bits before the step and micro-batch are mixed
	// in (2^64 / the golden ratio, as in SplitMix64).
	seedMix = 0x9e3779b97f4a7c15
	// microBits is the room left for the micro-batch index below the step's bits in a
	// dropout seed (up to 2^20 micro-batches per step).
	microBits = 20
)

// TrainConfig is every setting of a LoRA run. Defaults (DefaultTrainConfig) are Qwen's recipe.
type TrainConfig struct {
	LoRA        Config  `json:"lora"`
	LR          float64 `json:"lr"`
	Schedule    string  `json:"schedule"`
	WarmupSteps int     `json:"warmup_steps"`
	WarmupRatio float64 `json:"warmup_ratio"`
	WeightDecay float64 `json:"weight_decay"`
	Beta1       float64 `json:"adam_beta1"`
	Beta2       float64 `json:"adam_beta2"`
	Eps         float64 `json:"adam_eps"`
	MaxGradNorm float64 `json:"max_grad_norm"`
	BatchSize   int     `json:"batch_size"`
	GradAccum   int     `json:"grad_accum"`
	Steps       int     `json:"steps"`
	Epochs      float64 `json:"epochs"`
	MaxLen      int     `json:"max_len"`
	Seed        uint64  `json:"seed"`
	EvalEvery   int     `json:"eval_every"`
	SaveEvery   int     `json:"save_every"`
	Mask        string  `json:"mask"`
	ValRatio    float64 `json:"val_ratio"`
	// TrainSpecialTokens trains the special-token rows of wte and lm_head (for base models).
	TrainSpecialTokens bool `json:"train_special_tokens"`
	// ModulesToSave trains wte and/or lm_head in full (Qwen's choice for base models).
	ModulesToSave []string `json:"modules_to_save,omitempty"`
	// Pack puts several short sequences in one row of up to MaxLen tokens, attention and
	// positions kept separate for each.
	Pack bool `json:"pack,omitempty"`
}

// DefaultTrainConfig is Qwen's LoRA recipe: r 64, alpha 16, dropout 0.05, lr 3e-4 cosine with
// 1% warmup, weight decay 0.1, Adam betas 0.9/0.95, clipping at 1.0.
func DefaultTrainConfig() TrainConfig {
	return TrainConfig{
		LoRA: DefaultConfig(), LR: 3e-4, Schedule: "cosine", WarmupRatio: 0.01, WeightDecay: 0.1,
		Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, MaxGradNorm: 1.0, BatchSize: 1, GradAccum: 1, Epochs: 1,
		MaxLen: 512, Seed: 42, Mask: string(data.MaskQwen), ValRatio: 0,
	}
}

// Validate checks the settings.
func (c TrainConfig) Validate() error {
	if err := c.LoRA.Validate(); err != nil {
		return err
	}
	switch {
	case c.BatchSize <= 0 || c.GradAccum <= 0:
		return fmt.Errorf("lora: batch size %d and gradient accumulation %d must be positive", c.BatchSize, c.GradAccum)
	case c.Steps < 0 || c.Epochs < 0 || c.Steps == 0 && c.Epochs == 0:
		return fmt.Errorf("lora: set --steps or --epochs to a positive number")
	case c.MaxLen < 2:
		return fmt.Errorf("lora: max length %d is too short", c.MaxLen)
	case c.WarmupRatio < 0 || c.WarmupRatio > 1:
		return fmt.Errorf("lora: warmup ratio %g is not in [0, 1]", c.WarmupRatio)
	case !(c.Beta1 >= 0 && c.Beta1 < 1 && c.Beta2 >= 0 && c.Beta2 < 1 && c.Eps > 0):
		return fmt.Errorf("lora: Adam betas must be in [0, 1) and eps positive")
	case c.ValRatio < 0 || c.ValRatio >= 1:
		return fmt.Errorf("lora: validation ratio %g is not in [0, 1)", c.ValRatio)
	}
	_, err := data.ParseMask(c.Mask)
	if err != nil {
		return err
	}
	if _, err := ModuleTensorNames(c.ModulesToSave); err != nil {
		return err
	}
	if c.TrainSpecialTokens && len(c.ModulesToSave) > 0 {
		return fmt.Errorf("lora: --train-special-tokens and --modules-to-save both train wte/lm_head rows; choose one")
	}
	return optim.Schedule{Kind: c.Schedule, Peak: c.LR, Total: 1}.Validate()
}

// TotalSteps is the number of optimizer steps for n training sequences.
func (c TrainConfig) TotalSteps(n int) int {
	if c.Steps > 0 {
		return c.Steps
	}
	perStep := c.BatchSize * c.GradAccum
	return max(1, int(math.Ceil(c.Epochs*float64(n)/float64(perStep))))
}

// Trainer runs optimizer steps over prepared sequences.
type Trainer struct {
	Model   *model.Model
	Adapter *Adapter
	Params  []*model.Param // what is trained: the adapter, then any extra parameters
	Cfg     TrainConfig
	Train   []data.Sequence
	Val     []data.Sequence
	PadID   int
	Opt     *optim.AdamW
	Sched   optim.Schedule
	Step    int // optimizer steps done
	// Special are trained special-token rows, whose token ids each checkpoint's adapter
	// config records (nil: none).
	Special *SpecialTokens
	graphs  map[[2]int]*GradGraph
	order   map[int][]int
	sum     [][]float32 // the step's pooled gradients, reused from step to step
	// before is the state the last update started from: the weights that gave that step its
	// finite loss, and the optimizer's moments then (a non-finite step goes back to it).
	before *trainState
	// dev keeps the trained parameters and the optimizer on an executor's device
	// (model.OptimExecutor; device_optim.go), nil until its first step.
	dev deviceState
}

// trainState is a copy of the trained values and the optimizer's moments and step count.
type trainState struct {
	values, m, v [][]float32
	optStep      int
}

// keep copies the trained values and the optimizer's state into s (allocated once).
func (s *trainState) keep(values [][]float32, o *optim.AdamW) {
	if s.values == nil {
		for i := range values {
			s.values = append(s.values, make([]float32, len(values[i])))
			s.m = append(s.m, make([]float32, len(o.M[i])))
			s.v = append(s.v, make([]float32, len(o.V[i])))
		}
	}
	for i := range values {
		copy(s.values[i], values[i])
		copy(s.m[i], o.M[i])
		copy(s.v[i], o.V[i])
	}
	s.optStep = o.Step
}

// restore puts s back.
func (s *trainState) restore(values [][]float32, o *optim.AdamW) {
	for i := range values {
		copy(values[i], s.values[i])
		copy(o.M[i], s.m[i])
		copy(o.V[i], s.v[i])
	}
	o.Step = s.optStep
}

// StepResult is what one optimizer step measured.
type StepResult struct {
	Step     int     `json:"step"`
	LR       float64 `json:"lr"`
	Loss     float64 `json:"loss"`
	GradNorm float64 `json:"grad_norm"`
	Tokens   int     `json:"tokens"`     // trained tokens (labels that count)
	Seen     int     `json:"seq_tokens"` // real (not padding) tokens processed
	EvalLoss float64 `json:"eval_loss,omitempty"`
}

// NewTrainer prepares the optimizer and schedule for params.
func NewTrainer(m *model.Model, a *Adapter, params []*model.Param, cfg TrainConfig, train, val []data.Sequence, padID int) (*Trainer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if len(train) == 0 {
		return nil, fmt.Errorf("lora: no training sequences")
	}
	sizes := make([]int, len(params))
	for i, p := range params {
		sizes[i] = p.Value.Size()
	}
	total := cfg.TotalSteps(len(train))
	warm := cfg.WarmupSteps
	if warm == 0 {
		warm = optim.WarmupSteps(cfg.WarmupRatio, total)
	}
	return &Trainer{
		Model: m, Adapter: a, Params: params, Cfg: cfg, Train: train, Val: val, PadID: padID,
		Opt:    optim.NewAdamW(sizes, cfg.Beta1, cfg.Beta2, cfg.Eps, cfg.WeightDecay),
		Sched:  optim.Schedule{Kind: cfg.Schedule, Peak: cfg.LR, Warmup: warm, Total: total},
		graphs: map[[2]int]*GradGraph{}, order: map[int][]int{},
	}, nil
}

// Done reports whether every step has run.
func (t *Trainer) Done() bool { return t.Step >= t.Sched.Total }

// sequence returns the training sequence at position pos of the endless shuffled stream.
func (t *Trainer) sequence(pos int) data.Sequence {
	n := len(t.Train)
	epoch := pos / n
	ord, ok := t.order[epoch]
	if !ok {
		if len(t.order) > keptEpochOrders {
			clear(t.order)
		}
		ord = data.Epoch(n, t.Cfg.Seed, epoch)
		t.order[epoch] = ord
	}
	return t.Train[ord[pos%n]]
}

// MakeBatch pads sequences to a common length (the longest, rounded up to a multiple of 8
// so few graph shapes occur, capped at MaxLen) with padID and mask 0.
func MakeBatch(seqs []data.Sequence, padID, maxLen int) *Batch {
	longest := 0
	for _, s := range seqs {
		longest = max(longest, len(s.IDs))
	}
	seq := max(longest, min(maxLen, (longest+padMultiple-1)/padMultiple*padMultiple))
	b := &Batch{Batch: len(seqs), Seq: seq}
	packed := false
	for _, s := range seqs {
		packed = packed || s.Segments != nil
	}
	for _, s := range seqs {
		for i := 0; i < seq; i++ {
			real := i < len(s.IDs)
			if real {
				b.IDs = append(b.IDs, int32(s.IDs[i]))
				b.Labels = append(b.Labels, int32(s.Labels[i]))
			} else {
				b.IDs = append(b.IDs, int32(padID))
				b.Labels = append(b.Labels, autograd.IgnoreIndex)
			}
			b.Mask = append(b.Mask, real)
			if packed {
				seg, pos := int32(-1), int32(i) // padding: its own segment
				if real && s.Segments != nil {
					seg, pos = int32(s.Segments[i]), int32(s.Positions[i])
				} else if real {
					seg = 0
				}
				b.Segments = append(b.Segments, seg)
				b.Positions = append(b.Positions, pos)
			}
		}
	}
	return b
}

func (t *Trainer) graph(b *Batch) (*GradGraph, error) {
	key := [2]int{b.Batch, b.Seq}
	if g, ok := t.graphs[key]; ok {
		return g, nil
	}
	limit := maxGraphs
	if _, ok := t.Model.Exec.(model.GradExecutor); ok {
		limit = maxDeviceGraphs
	}
	if len(t.graphs) >= limit {
		if err := t.closeGraphs(); err != nil {
			return nil, err
		}
	}
	g, err := NewGradGraph(t.Model, t.Params, b.Batch, b.Seq)
	if err != nil {
		return nil, err
	}
	t.graphs[key] = g
	return g, nil
}

// microBatch is micro-batch k of the current step: its padded batch, how many of its
// labels count (Targets) and its real (not padding) tokens.
func (t *Trainer) microBatch(k int) (b *Batch, targets, seen int) {
	first := (t.Step*t.Cfg.GradAccum + k) * t.Cfg.BatchSize
	seqs := make([]data.Sequence, t.Cfg.BatchSize)
	for i := range seqs {
		seqs[i] = t.sequence(first + i)
	}
	b = MakeBatch(seqs, t.PadID, t.Cfg.MaxLen)
	for _, real := range b.Mask {
		if real {
			seen++
		}
	}
	return b, b.Targets(), seen
}

// dropoutSeed is the dropout stream of a micro-batch: a function of the run's seed and its
// position only, so a resumed run draws the same masks.
func (t *Trainer) dropoutSeed(step, micro int) uint64 {
	return t.Cfg.Seed*seedMix ^ uint64(step)<<microBits ^ uint64(micro)
}

// runMicroBatches runs the step's GradAccum micro-batches through run (micro-batch k of n
// trained tokens on its graph g), skipping those without a trained token, and sets res's
// tokens, rows seen and loss, the mean over the step's trained tokens.
func (t *Trainer) runMicroBatches(ctx context.Context, res *StepResult, run func(k int, g *GradGraph, b *Batch, n int) (float64, error)) error {
	var lossSum float64
	for k := 0; k < t.Cfg.GradAccum; k++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		b, n, seen := t.microBatch(k)
		if n == 0 {
			continue
		}
		g, err := t.graph(b)
		if err != nil {
			return err
		}
		loss, err := run(k, g, b, n)
		if err != nil {
			return err
		}
		lossSum += loss * float64(n)
		res.Tokens += n
		res.Seen += seen
	}
	if res.Tokens == 0 {
		return fmt.Errorf("lora: step %d has no trained token (every label is -100)", t.Step)
	}
	res.Loss = lossSum / float64(res.Tokens)
	return nil
}

// TrainStep runs one optimizer step: GradAccum micro-batches of BatchSize sequences,
// gradients pooled token-weighted (the loss of the step is the mean over all its trained
// tokens), clipped, then AdamW at the scheduled learning rate.
func (t *Trainer) TrainStep(ctx context.Context) (StepResult, error) {
	if ox, ok := t.Model.Exec.(model.OptimExecutor); ok {
		return t.deviceStep(ctx, ox)
	}
	res := StepResult{Step: t.Step, LR: t.Sched.LR(t.Step)}
	sum := t.sum
	for _, g := range sum {
		clear(g)
	}
	err := t.runMicroBatches(ctx, &res, func(k int, g *GradGraph, b *Batch, n int) (float64, error) {
		loss, grads, err := g.Run(b, t.dropoutSeed(t.Step, k))
		if err != nil {
			return 0, err
		}
		if sum == nil {
			sum = make([][]float32, len(grads))
			for i, gr := range grads {
				sum[i] = make([]float32, len(gr))
			}
			t.sum = sum
		}
		for i, gr := range grads {
			for j, v := range gr {
				sum[i][j] += float32(v * float32(n)) // the product rounded, never fused (grad_accumulate's order)
			}
		}
		return loss, nil
	})
	if err != nil {
		return res, err
	}
	for _, g := range sum {
		for j := range g {
			g[j] /= float32(res.Tokens)
		}
	}
	res.GradNorm = optim.ClipGradNorm(sum, t.Cfg.MaxGradNorm)
	values := make([][]float32, len(t.Params))
	for i, p := range t.Params {
		values[i] = p.Value.Data().([]float32)
	}
	if !finite(res.Loss) || !finite(res.GradNorm) {
		nf := &NonFiniteError{Step: t.Step, Loss: res.Loss, GradNorm: res.GradNorm}
		if t.before != nil { // these weights came from the last update: go back to before it
			t.before.restore(values, t.Opt)
			t.before = nil
			t.Step--
			nf.WentBack = true
		}
		return res, nf
	}
	if t.before == nil {
		t.before = &trainState{}
	}
	t.before.keep(values, t.Opt)
	if err := t.Opt.Update(values, sum, res.LR); err != nil {
		return res, err
	}
	t.Step++
	return res, nil
}

// NonFiniteError stops training at a step whose loss or gradient norm is NaN or infinite.
// The step is not taken, and since the weights it ran on came from the update before it, the
// trainer goes back to before that update (WentBack): its weights, which gave their step a
// finite loss, and the optimizer's state then, one step earlier.
type NonFiniteError struct {
	Step           int // the step that failed, counted from 0 as StepResult.Step
	Loss, GradNorm float64
	WentBack       bool // the trainer is back at the state before the last update
	// Checkpoint is where Run saved that state ("" when nothing was saved); InitAdapter says
	// that the checkpoint can start a new run (--init-adapter: LoRA tensors only).
	Checkpoint  string
	InitAdapter bool
}

func (e *NonFiniteError) Error() string {
	msg := fmt.Sprintf("lora: step %d: the loss is %g and the gradients' norm %g; the step was not taken", e.Step+1, e.Loss, e.GradNorm)
	if !e.WentBack {
		return msg + "; the model's own weights give a non-finite loss on this data: check the model directory and the data"
	}
	msg += fmt.Sprintf(". Step %d's update gave those weights, so training went back to before it", e.Step)
	if e.Checkpoint != "" {
		msg += fmt.Sprintf(": the adapter and optimizer state after step %d, whose weights trained step %d with a finite loss, are in %s", e.Step-1, e.Step, e.Checkpoint)
	}
	msg += ". Usually the learning rate is too high for this data: run again with a lower --lr or a longer warm-up"
	if e.Checkpoint != "" && e.InitAdapter {
		msg += ", starting from those weights with --init-adapter " + e.Checkpoint
	}
	return msg
}

func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }

// Evaluate is the token-weighted mean loss over the validation sequences (no dropout).
func (t *Trainer) Evaluate() (loss float64, err error) {
	if ox, ok := t.Model.Exec.(model.OptimExecutor); ok { // the device's values: the host's where newer (a checkpoint loaded)
		if err := t.deviceParams(ox); err != nil {
			return 0, err
		}
	} else if _, ok := t.Model.Exec.(model.GradExecutor); !ok { // on the CPU: the host's values
		if err := t.Sync(); err != nil {
			return 0, err
		}
	}
	ev := t.Model.NewEvaluatorMode(model.Evaluation)
	defer func() {
		if cerr := ev.Close(); cerr != nil && err == nil {
			loss, err = 0, cerr
		}
	}()
	var sum float64
	var n int
	for _, s := range t.Val {
		l, k, err := ev.Score(s.IDs, s.Labels)
		if err != nil {
			return 0, fmt.Errorf("lora: validating %s: %w", s.Source, err)
		}
		sum += l
		n += k
	}
	if n == 0 {
		return 0, fmt.Errorf("lora: the validation set has no trained token")
	}
	return sum / float64(n), nil
}

// Close releases the compiled graphs and the device's parameters, their values and
// moments first brought back to t.Params and t.Opt.
func (t *Trainer) Close() error {
	return errors.Join(t.closeGraphs(), t.closeDevice())
}

// closeGraphs releases the compiled graphs.
func (t *Trainer) closeGraphs() error {
	var errs []error
	for k, g := range t.graphs {
		errs = append(errs, g.Close())
		delete(t.graphs, k)
	}
	return errors.Join(errs...)
}
