package lora

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/qwen-tune/qwen-tune/checkpoints"
	"github.com/qwen-tune/qwen-tune/data"
	"github.com/qwen-tune/qwen-tune/model"
)

// Options is one training run: the model, the data, where the output goes and the
// settings. Start from DefaultOptions; Run checks them once.
type Options struct {
	ModelDir string // base model directory: config.json, safetensors weights, qwen.tiktoken
	Data     string // conversations JSON/JSONL, messages JSONL or input_ids JSONL
	Out      string // the adapter, checkpoints, metrics and training_config.json go here
	// Exec, when it runs training graphs (model.GradExecutor, the GPU's), computes the loss
	// and the gradients, and the optimizer's step where it keeps the trained parameters
	// (model.OptimExecutor, the GPU's). nil: the CPU.
	Exec model.Executor
	// Metrics is the file of one JSON line per step (default: Out/metrics.jsonl).
	Metrics string
	// InitAdapter starts from this PEFT adapter (its r, alpha and targets) instead of a
	// fresh one.
	InitAdapter string
	// OnBad says what a malformed example does: stop the run, or be left out and reported.
	OnBad data.OnBad
	// Resume continues the run in Out from its latest checkpoint, or starts it again from
	// step 0 when it has none (or starts a new run when Out holds none). Model, the data's
	// content (its sha256) and Train must be the run's: Train left at its zero value takes
	// the run's settings, and of the others only Steps, Epochs, EvalEvery and SaveEvery may
	// differ. Temporary files of a killed run are removed, and a complete checkpoint it was
	// killed before renaming is kept.
	Resume bool
	// Train is the recipe: adapter shape, optimizer, schedule, batches, evaluation and
	// checkpoint cadence, special-token and full-module training.
	Train TrainConfig
}

// DefaultOptions are Qwen's recipe (DefaultTrainConfig), stopping at a malformed example.
func DefaultOptions() Options {
	return Options{OnBad: data.BadError, Train: DefaultTrainConfig()}
}

// Hooks report a run's progress; any may be nil.
type Hooks struct {
	// OnLoad is called after each tensor of the base model loads.
	OnLoad func(done, total int)
	// OnSkip is called for each malformed example left out (OnBad skip).
	OnSkip func(err error)
	// OnStart is called once before the first step.
	OnStart func(Start)
	// OnStep is called after each optimizer step, with the validation loss where one was
	// measured. Returning ErrStop ends the run there as a cancelled context does; any other
	// error fails it.
	OnStep func(StepResult) error
	// OnSave is called after each checkpoint is written, with its directory.
	OnSave func(dir string)
}

// ErrStop, returned by Hooks.OnStep, stops a run after that step with a checkpoint saved.
var ErrStop = errors.New("lora: run stopped")

// Start is what a run is about to do.
type Start struct {
	Config    TrainConfig // the resolved settings, as saved in training_config.json
	Stats     data.Stats  // the examples and tokens prepared
	Sequences int         // training sequences before packing (Config.Pack)
	Rows      int         // training rows: Sequences, or fewer when packed
	Val       int         // validation sequences
	Params    int         // trained parameters
	Layers    int         // LoRA layers
	// Base is the frozen model the adapters train on: GPTQ bits and group size for Q-LoRA,
	// else the floating-point dtype.
	Base        checkpoints.AdapterBase
	Step, Total int    // the first step (past the checkpoint resumed from) and the last
	ResumedFrom string // the checkpoint resumed from, or ""
	Metrics     string // the metrics file
	// Notes say what resuming found and did: a restart from step 0, a kept or removed
	// unfinished checkpoint, removed temporary files, changed run length.
	Notes []string
}

// Result is how a run ended.
type Result struct {
	Step, Total int
	// Stopped is set when the context was cancelled or OnStep returned ErrStop: Checkpoint
	// holds the state to continue from with Options.Resume, and no adapter was written.
	Stopped    bool
	Checkpoint string       // the latest checkpoint
	Metrics    string       // the metrics file
	History    []StepResult // every step in Metrics, a resumed run's earlier ones included
}

// Run fine-tunes o.ModelDir on o.Data and writes adapter_config.json and
// adapter_model.safetensors in PEFT's format to o.Out, with training_config.json, the
// metrics and a resumable checkpoint-<step> (every SaveEvery steps and at the end). o.Out
// must be absent or empty unless o.Resume is set. When ctx is cancelled or OnStep returns
// ErrStop, Run saves a checkpoint at the last completed step and returns a Result with
// Stopped set and a nil error.
func Run(ctx context.Context, o Options, h Hooks) (*Result, error) {
	rp, err := o.resolve()
	if err != nil {
		return nil, err
	}
	op, err := Open(o.ModelDir, OpenOptions{NeedTokenizer: true, TrainModules: o.Train.ModulesToSave, Progress: h.OnLoad})
	if err != nil {
		return nil, err
	}
	defer op.Close()
	if o.Exec != nil {
		op.Model.Exec = o.Exec
		defer func() { op.Model.Exec = nil }()
	}
	r := &run{o: o, h: h, op: op}
	if err := r.setUp(rp); err != nil {
		return nil, err
	}
	defer r.tr.Close()
	return r.train(ctx)
}

// resolve checks o once, hashes the data, and for a resumed run finds where it continues
// (and takes or checks its settings).
func (o *Options) resolve() (*resumePoint, error) {
	if o.ModelDir == "" || o.Data == "" || o.Out == "" {
		return nil, fmt.Errorf("--model, --data and --out are required")
	}
	if o.OnBad != data.BadError && o.OnBad != data.BadSkip {
		return nil, fmt.Errorf("--on-bad-example %q: expected error or skip", o.OnBad)
	}
	if o.Metrics == "" {
		o.Metrics = filepath.Join(o.Out, "metrics.jsonl")
	}
	rp := &resumePoint{}
	var err error
	if rp.dataSHA, err = fileSHA256(o.Data); err != nil {
		return nil, fmt.Errorf("--data: %w", err)
	}
	if o.Resume {
		err = o.resume(rp)
	} else {
		err = o.checkFresh()
	}
	if err != nil {
		return nil, err
	}
	return rp, o.Train.Validate()
}

// fileSHA256 is the hex sha256 of a file's content.
func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// run is a training run being set up and carried out.
type run struct {
	o       Options
	h       Hooks
	op      *Opened
	tr      *Trainer
	special *SpecialTokens
	modules []*model.Param
	start   Start
	dataSHA string
}

// setUp prepares the data, the adapter and the trainer, restores a resumed checkpoint and
// writes training_config.json.
func (r *run) setUp(rp *resumePoint) error {
	resumeFrom := rp.from
	r.dataSHA = rp.dataSHA
	m, tok, cfg := r.op.Model, r.op.Tok, &r.o.Train
	exs, skipped, err := data.Load(r.o.Data, r.o.OnBad, m.Config.VocabSize)
	for _, s := range skipped {
		if r.h.OnSkip != nil {
			r.h.OnSkip(s)
		}
	}
	if err != nil {
		return err
	}
	seqs, stats, err := data.Prepare(tok, exs, data.Mask(cfg.Mask), cfg.MaxLen)
	if err != nil {
		return err
	}
	stats.Skipped = len(skipped)
	train, val := data.Split(seqs, cfg.ValRatio, cfg.Seed)
	r.start = Start{Stats: stats, Sequences: len(train), Val: len(val), ResumedFrom: resumeFrom, Metrics: r.o.Metrics, Notes: rp.notes}
	if cfg.Pack {
		train = data.Pack(train, cfg.MaxLen)
	}
	r.start.Rows = len(train)

	var a *Adapter
	if r.o.InitAdapter != "" && resumeFrom == "" {
		var extra map[string]checkpoints.Tensor
		if a, extra, err = Load(r.o.InitAdapter, m); err != nil {
			return err
		}
		if len(extra) > 0 {
			return fmt.Errorf("--init-adapter %s saves whole modules; only LoRA tensors can start a run", r.o.InitAdapter)
		}
		cfg.LoRA = a.Config
		base := BaseOf(m) // what it trains on from here
		a.TrainedOn = &base
	} else if a, err = Apply(m, cfg.LoRA, cfg.Seed); err != nil {
		return err
	}
	params := a.Params()
	if r.special, err = AddSpecialTokens(m, tok, cfg.TrainSpecialTokens); err != nil {
		return err
	}
	params = append(params, r.special.Params()...)
	if r.modules, err = ModuleParams(m, cfg.ModulesToSave); err != nil {
		return err
	}
	params = append(params, r.modules...)
	if r.tr, err = NewTrainer(m, a, params, *cfg, train, val, tok.EndOfTextID()); err != nil {
		return err
	}
	r.tr.Special = r.special
	if resumeFrom != "" {
		if err := r.tr.LoadCheckpoint(resumeFrom); err != nil {
			return err
		}
		if r.tr.Step > r.tr.Sched.Total {
			return fmt.Errorf("--resume: %s is at step %d, past the %d steps the settings give: ask for more with --steps or --epochs", resumeFrom, r.tr.Step, r.tr.Sched.Total)
		}
	}
	if err := os.MkdirAll(r.o.Out, 0o755); err != nil {
		return fmt.Errorf("lora: %w", err)
	}
	if r.o.Resume {
		if err := truncateMetrics(r.o.Metrics, r.tr.Step); err != nil {
			return err
		}
	}
	for _, p := range params {
		r.start.Params += p.Value.Size()
	}
	r.start.Config, r.start.Layers, r.start.Step, r.start.Total = *cfg, len(a.Layers), r.tr.Step, r.tr.Sched.Total
	r.start.Base = BaseOf(m)
	if r.h.OnStart != nil {
		r.h.OnStart(r.start)
	}
	return checkpoints.WriteJSON(filepath.Join(r.o.Out, RunFile), runRecord{
		Model: r.o.ModelDir, Data: r.o.Data, DataSHA256: r.dataSHA, InitAdapter: r.o.InitAdapter, Cfg: *cfg, Stats: stats})
}

// train runs the remaining steps, then saves a checkpoint and, when every step ran, the
// adapter.
func (r *run) train(ctx context.Context) (*Result, error) {
	hist, err := ReadMetrics(r.o.Metrics)
	if err != nil {
		return nil, err
	}
	mw, err := appendMetrics(r.o.Metrics)
	if err != nil {
		return nil, err
	}
	hist, err = r.steps(ctx, mw, hist)
	if cerr := mw.Close(); err == nil {
		err = cerr
	}
	stopped := errors.Is(err, ErrStop) || ctx.Err() != nil && errors.Is(err, ctx.Err())
	if nf := (*NonFiniteError)(nil); errors.As(err, &nf) {
		// the trainer went back to the state its last finite step started from: keep it
		dir, cerr := r.checkpoint()
		if cerr != nil {
			return nil, errors.Join(err, cerr)
		}
		nf.Checkpoint, nf.InitAdapter = dir, len(r.extra()) == 0
		return nil, nf
	}
	if err != nil && !stopped {
		return nil, err
	}
	res := &Result{Step: r.tr.Step, Total: r.tr.Sched.Total, Stopped: stopped, Metrics: r.o.Metrics, History: hist}
	if res.Checkpoint, err = r.checkpoint(); err != nil {
		return nil, err
	}
	if stopped {
		return res, nil
	}
	if err := r.tr.Adapter.Save(r.o.Out, r.o.ModelDir, r.tr.Cfg.ModulesToSave, r.extra()...); err != nil {
		return nil, err
	}
	if err := r.special.SaveConfig(r.o.Out); err != nil {
		return nil, err
	}
	return res, nil
}

// steps trains until the last step with metrics, validation and checkpoint cadence.
func (r *run) steps(ctx context.Context, mw *metricsWriter, hist []StepResult) ([]StepResult, error) {
	tr, cfg := r.tr, r.tr.Cfg
	for !tr.Done() {
		res, err := tr.TrainStep(ctx)
		if err != nil {
			return hist, err
		}
		if len(tr.Val) > 0 && (cfg.EvalEvery > 0 && tr.Step%cfg.EvalEvery == 0 || tr.Done()) {
			if res.EvalLoss, err = tr.Evaluate(); err != nil {
				return hist, err
			}
		}
		if err := mw.write(res); err != nil {
			return hist, err
		}
		hist = append(hist, res)
		if r.h.OnStep != nil {
			if err := r.h.OnStep(res); err != nil {
				return hist, err
			}
		}
		if cfg.SaveEvery > 0 && tr.Step%cfg.SaveEvery == 0 && !tr.Done() {
			if _, err := r.checkpoint(); err != nil {
				return hist, err
			}
		}
	}
	return hist, nil
}

// checkpoint saves out/checkpoint-<step>.
func (r *run) checkpoint() (string, error) {
	dir, err := r.tr.SaveCheckpoint(r.o.Out, r.o.ModelDir, r.extra())
	if err == nil && r.h.OnSave != nil {
		r.h.OnSave(dir)
	}
	return dir, err
}

// extra are the tensors saved besides the LoRA layers: special-token rows and full modules.
func (r *run) extra() []checkpoints.Tensor {
	return append(r.special.Tensors(), ModuleTensors(r.modules)...)
}
