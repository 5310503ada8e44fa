//go:build cudaemu || qtcuda

package cuda_test

import (
	"context"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/qwen-tune/qwen-tune/autograd/cuda"

	"github.com/qwen-tune/qwen-tune/checkpoints"
	"github.com/qwen-tune/qwen-tune/data"
	"github.com/qwen-tune/qwen-tune/internal/refmath"
	"github.com/qwen-tune/qwen-tune/lora"
	"github.com/qwen-tune/qwen-tune/model"
	"github.com/qwen-tune/qwen-tune/quantize"
	"github.com/qwen-tune/qwen-tune/tokenizer"
)

// embedShape is the tiny model of the embedding tests: lossCase's shape, in a directory (its
// vocabulary gives the special tokens' ids: 4096 ordinary ones, then tokenizer.NumSpecial).
var embedShape = model.TinyOptions{Seed: 3, VocabRanks: 4096, Hidden: 128, Layers: 2, Heads: 2, MLPWidth: 344, SeqLength: 2048}

// tinyDir writes embedShape's model directory and loads its tokenizer.
func tinyDir(t *testing.T) (string, *tokenizer.Tokenizer) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tiny")
	if _, err := model.WriteTiny(dir, embedShape); err != nil {
		t.Fatal(err)
	}
	tok, err := tokenizer.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return dir, tok
}

// embedMode is what a test trains besides LoRA: special-token rows or whole tables.
type embedMode int

const (
	specialRows embedMode = iota
	wholeTables
)

func (e embedMode) String() string {
	return [...]string{"special-token rows", "modules_to_save wte and lm_head"}[e]
}

// trainedModel loads dir's model with LoRA r 8 (dropout 0.3, seed 1) and what mode trains,
// and returns it with every trained parameter.
func trainedModel(t *testing.T, dir string, tok *tokenizer.Tokenizer, mode embedMode, dropout float64) (*model.Model, *lora.Adapter, []*model.Param) {
	t.Helper()
	var opts model.LoadOptions
	if mode == wholeTables {
		opts.Train = []string{checkpoints.Embedding, checkpoints.LMHead}
	}
	m, err := model.Load(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	cfg := lora.DefaultConfig()
	cfg.R, cfg.Dropout = 8, dropout
	a, err := lora.Apply(m, cfg, 1)
	if err != nil {
		t.Fatal(err)
	}
	params := a.Params()
	if mode == specialRows {
		sp, err := lora.AddSpecialTokens(m, tok, true)
		if err != nil {
			t.Fatal(err)
		}
		params = append(params, sp.Params()...)
	} else {
		ps, err := lora.ModuleParams(m, []string{"wte", "lm_head"})
		if err != nil {
			t.Fatal(err)
		}
		params = append(params, ps...)
	}
	return m, a, params
}

// newEmbedCase is newLossCase's batch (padding, packing, ignored labels, dropout) on
// embedShape's model with mode trained too; a third of the ids are special tokens, repeated,
// so that the rows' gradients sum several positions.
func newEmbedCase(t *testing.T, mode embedMode) *lossCase {
	t.Helper()
	c := newLossCase(t)
	dir, tok := tinyDir(t)
	m, _, params := trainedModel(t, dir, tok, mode, 0.3)
	t.Cleanup(func() { m.Close() })
	r := rand.New(rand.NewPCG(11, 12))
	for _, p := range params { // zero LoRA B and special-token rows: give them something to add
		w := p.Value.Data().([]float32)
		for i, v := range w {
			if v == 0 {
				v = float32(r.NormFloat64() * 0.2)
			}
			// bf16 values, as the device keeps the weights (the tables are bf16 already)
			w[i] = math.Float32frombits(math.Float32bits(v) &^ 0xffff)
		}
	}
	off := tok.OrdinarySize()
	for i := range c.st.IDs {
		if i%3 == 1 {
			c.st.IDs[i] = int32(off + r.IntN(5))
		}
	}
	c.m, c.params = m, params
	return c
}

// TestDeviceEmbedGradPrograms: the training graphs with special-token rows and with wte
// and lm_head trained in full give, on the device, the CPU's loss and every gradient.
func TestDeviceEmbedGradPrograms(t *testing.T) {
	for _, mode := range []embedMode{specialRows, wholeTables} {
		t.Run(mode.String(), func(t *testing.T) {
			d := openDevice(t) // its uploaded weights are keyed by host address: one model a device
			c := newEmbedCase(t, mode)
			wantLoss, want := c.cpu(t, true)
			g, loss, grads := c.build(t, true)
			gotLoss, got, _ := runGraph(t, d, g.ExprGraph, loss, grads, g.Step, cuda.GradOptions{})
			e := math.Abs(gotLoss-wantLoss) / wantLoss
			t.Logf("loss %.6f on the device, %.6f on the CPU: relative difference %.2e", gotLoss, wantLoss, e)
			// measured 3.7e-4 (rows) and 1.2e-4 (tables): bf16 GEMM inputs
			if e > 4e-3 {
				t.Errorf("the device's loss differs from the CPU's by %.2e", e)
			}
			for i := range want {
				e := refmath.RelDiff(got[i], want[i])
				t.Logf("%s: relative difference %.2e", c.params[i].Name, e)
				// measured at worst 1.9e-2 (wte's; LoRA's 1.8e-2, the rows' 1.2e-2 and
				// 9.3e-3, lm_head's 8.1e-3): bf16 GEMM inputs through the backward
				if e > 0.2 || e != e {
					t.Errorf("%s: gradient differs from the CPU's by %.2e", c.params[i].Name, e)
				}
			}
		})
	}
}

// embedSeqs are randomSeqs with every fourth id one of the first five special tokens.
func embedSeqs(tok *tokenizer.Tokenizer) []data.Sequence {
	seqs := randomSeqs(tok.OrdinarySize())
	for _, s := range seqs {
		for i := range s.IDs {
			if i%4 == 2 {
				s.IDs[i] = tok.OrdinarySize() + i%5
			}
		}
	}
	return seqs
}

// TestDeviceEmbedSteps: lora's trainer with special-token rows, and with wte and lm_head
// trained in full, on the device (AdamW on the host) follows the CPU trainer's losses over a
// few steps with padding, dropout and gradient accumulation, on a bf16 model and on a GPTQ
// one (Q-LoRA; its tables are fp16, which the device rounds to bf16).
func TestDeviceEmbedSteps(t *testing.T) {
	bf16, tok := tinyDir(t)
	o := quantize.DefaultOptions()
	o.GroupSize = 8 // divides the widths of embedShape (128, 344)
	gptq, err := quantize.WriteTiny(t.TempDir(), embedShape, o, quantize.MethodRTN)
	if err != nil {
		t.Fatal(err)
	}
	seqs := embedSeqs(tok)
	for _, c := range []struct {
		name, dir string
		mode      embedMode
	}{{"bf16", bf16, specialRows}, {"bf16", bf16, wholeTables}, {"GPTQ", gptq, specialRows}, {"GPTQ", gptq, wholeTables}} {
		dir, mode := c.dir, c.mode
		t.Run(c.name+" "+mode.String(), func(t *testing.T) {
			run := func(exec model.Executor) []float64 {
				m, a, params := trainedModel(t, dir, tok, mode, 0.1)
				defer m.Close()
				m.Exec = exec
				cfg := lora.DefaultTrainConfig()
				cfg.LoRA = a.Config
				cfg.LR, cfg.BatchSize, cfg.GradAccum, cfg.Steps, cfg.MaxLen = 2e-3, 2, 2, 4, 32
				cfg.TrainSpecialTokens = mode == specialRows
				if mode == wholeTables {
					cfg.ModulesToSave = []string{"wte", "lm_head"}
				}
				tr, err := lora.NewTrainer(m, a, params, cfg, seqs, nil, 0)
				if err != nil {
					t.Fatal(err)
				}
				defer tr.Close()
				var losses []float64
				for !tr.Done() {
					res, err := tr.TrainStep(context.Background())
					if err != nil {
						t.Fatal(err)
					}
					losses = append(losses, res.Loss)
				}
				return losses
			}
			want := run(nil)
			got := run(&model.CUDA{Device: openDevice(t)})
			worst := maxRelDiff(got, want)
			t.Logf("losses on the device %.5f, on the CPU %.5f: worst relative difference %.2e", got, want, worst)
			// measured 1.2e-4 (rows) and 8.1e-4 (tables, whose lr 2e-3 moves the loss most), on
			// the GPTQ model 5.6e-5 and 7.3e-4: bf16 GEMM inputs; with the rows' or tables'
			// gradients left zero 2.4e-2 and 0.23
			if tol := []float64{1.2e-3, 8e-3}[mode]; worst > tol {
				t.Errorf("the device's losses differ from the CPU's by %.2e", worst)
			}
		})
	}
}

// TestDeviceEmbedRun: lora.Run on the device with --train-special-tokens, and with
// --modules-to-save wte,lm_head, saves an adapter and follows a CPU run's losses.
func TestDeviceEmbedRun(t *testing.T) {
	tmp := t.TempDir()
	o := lora.DefaultOptions()
	o.ModelDir, o.Data = filepath.Join(tmp, "tiny"), filepath.Join(tmp, "chats.jsonl")
	if _, err := model.WriteTiny(o.ModelDir, model.DefaultTiny()); err != nil {
		t.Fatal(err)
	}
	chats := `{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}
{"messages": [{"role": "user", "content": "bye"}, {"role": "assistant", "content": "see you soon"}]}
`
	if err := os.WriteFile(o.Data, []byte(chats), 0o644); err != nil {
		t.Fatal(err)
	}
	o.Train.Steps, o.Train.LoRA.R, o.Train.LR, o.Train.BatchSize = 3, 4, 1e-2, 2
	for _, mode := range []embedMode{specialRows, wholeTables} {
		t.Run(mode.String(), func(t *testing.T) {
			o := o
			o.Train.TrainSpecialTokens = mode == specialRows
			if mode == wholeTables {
				o.Train.ModulesToSave = []string{"wte", "lm_head"}
			}
			run := func(out string, exec model.Executor) []lora.StepResult {
				o.Out, o.Exec = filepath.Join(tmp, out), exec
				res, err := lora.Run(context.Background(), o, lora.Hooks{})
				if err != nil {
					t.Fatal(err)
				}
				if _, err := os.Stat(filepath.Join(o.Out, "adapter_model.safetensors")); err != nil {
					t.Fatalf("no adapter saved: %v", err)
				}
				return res.History
			}
			name := []string{"special", "modules"}[mode]
			want, got := run(name+"-cpu", nil), run(name+"-device", &model.CUDA{Device: openDevice(t)})
			worst := 0.0
			for i := range want {
				worst = max(worst, math.Abs(got[i].Loss-want[i].Loss)/want[i].Loss)
			}
			t.Logf("worst relative difference of the losses over %d steps: %.2e", len(want), worst)
			// measured 6.4e-4 (rows) and 7.3e-4 (tables): bf16 GEMM inputs, lr 1e-2; with
			// their gradients left zero 7.3e-2 and 0.25
			if len(got) != len(want) || worst > 8e-3 {
				t.Errorf("device run %+v, CPU run %+v", got, want)
			}
		})
	}
}
