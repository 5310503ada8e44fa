package lora

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/qwen-tune/qwen-tune/checkpoints"
	"github.com/qwen-tune/qwen-tune/model"
	"github.com/qwen-tune/qwen-tune/tokenizer"
)

// OpenOptions say how to open a model directory.
type OpenOptions struct {
	// Adapter is a PEFT adapter directory applied on top of the weights, not merged ("" =
	// none).
	Adapter string
	// NeedTokenizer makes a directory without qwen.tiktoken an error; otherwise Tok is nil
	// there.
	NeedTokenizer bool
	// TrainModules are the tables trained in full (wte, lm_head; TrainConfig.ModulesToSave):
	// loaded as trainable float32 and counted with their optimizer state in the memory check.
	TrainModules []string
	// Progress, if set, is called after each tensor loads with the count done and the total.
	Progress func(done, total int)
}

// Opened is a model directory loaded to run or train.
type Opened struct {
	Model   *model.Model
	Gen     *checkpoints.GenerationConfig
	Tok     *tokenizer.Tokenizer // nil when the directory has no vocabulary and none was needed
	Adapter *Adapter             // the adapter of OpenOptions.Adapter, or nil
}

// Close unmaps the weights.
func (o *Opened) Close() error { return o.Model.Close() }

// Open reads dir's configs, refuses a model this machine cannot hold, loads the vocabulary
// (checked against the embedding's vocab_size), the weights and the adapter.
func Open(dir string, o OpenOptions) (*Opened, error) {
	if dir == "" {
		return nil, fmt.Errorf("--model DIR is required (a directory with config.json and safetensors weights; 'qwen-tune init --tiny --out DIR' makes one)")
	}
	train, err := ModuleTensorNames(o.TrainModules)
	if err != nil {
		return nil, err
	}
	cfg, gen, err := checkpoints.ReadModelConfigs(dir)
	if err != nil {
		return nil, err
	}
	need := model.WeightBytes(cfg) + FullTrainingBytes(cfg, len(train))
	if err := model.CheckMemory(need, fmt.Sprintf("%s (%d parameters in bf16)", dir, cfg.ParamCount())); err != nil {
		return nil, err
	}
	op := &Opened{Gen: gen}
	if _, err := os.Stat(filepath.Join(dir, tokenizer.VocabFile)); err == nil {
		if op.Tok, err = tokenizer.Load(dir); err != nil {
			return nil, err
		}
		if op.Tok.Size() > cfg.VocabSize {
			return nil, fmt.Errorf("%s: the vocabulary has %d tokens but the model's embedding has %d rows (config vocab_size); the vocabulary belongs to another model", dir, op.Tok.Size(), cfg.VocabSize)
		}
	} else if o.NeedTokenizer {
		return nil, fmt.Errorf("%s has no %s: this command needs the model's vocabulary", dir, tokenizer.VocabFile)
	}
	if op.Model, err = model.Load(dir, model.LoadOptions{Train: train, Progress: o.Progress}); err != nil {
		return nil, err
	}
	if o.Adapter != "" {
		if _, ok := op.Model.Blocks[0].QKV.(*model.Int4); ok {
			op.Model.Close()
			return nil, fmt.Errorf("%s is a GPTQ Int4 model: a LoRA adapter cannot be applied to quantized weights. Apply %s to the floating-point model it was trained on, or merge it into that model (qwen-tune merge) and quantize the merged model", dir, o.Adapter)
		}
		if op.Adapter, err = Attach(o.Adapter, op.Model); err != nil {
			op.Model.Close()
			return nil, err
		}
	}
	return op, nil
}

// FullTrainingBytes is the memory that training n [vocab, hidden] tables in full takes
// besides the bf16 weights: for each a float32 copy, its gradient and AdamW's two moments.
func FullTrainingBytes(cfg *checkpoints.Config, n int) int64 {
	return int64(n) * 16 * int64(cfg.VocabSize) * int64(cfg.HiddenSize)
}
