package model

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/qwen-tune/qwen-tune/checkpoints"
	"github.com/qwen-tune/qwen-tune/tokenizer"
)

// TinyOptions shapes a tiny random Qwen model: the real architecture and file layout with
// small sizes, so every command can run on any machine without the 15 GB checkpoint.
type TinyOptions struct {
	Seed uint64
	// VocabRanks is how many cl100k_base ranks the demo vocabulary keeps (0 = all 100256).
	VocabRanks int
	Hidden     int
	Layers     int
	Heads      int
	MLPWidth   int
	SeqLength  int
	// VocabSize is the embedding's row count (config vocab_size); 0 pads the vocabulary's
	// size to a multiple of 128.
	VocabSize int
	// UntrainedSpecials makes a base model: the special-token rows of lm_head (and the padding
	// rows) stay at initialisation scale, as in a model pre-trained without ChatML, so its
	// logits for <|im_start|> and <|im_end|> are near zero while ordinary tokens' are not.
	UntrainedSpecials bool
}

// DefaultTiny is the embedded default model's shape.
func DefaultTiny() TinyOptions {
	return TinyOptions{Seed: 1, VocabRanks: 16384, Hidden: 64, Layers: 2, Heads: 4, MLPWidth: 176, SeqLength: 2048}
}

// Qwen7BShape is Qwen-7B's exact shape (random weights, the demo vocabulary in an embedding
// of 151,936 rows): 7,721,324,544 parameters, 15.4 GB in bf16.
func Qwen7BShape() TinyOptions {
	return TinyOptions{Seed: 1, VocabRanks: 0, Hidden: 4096, Layers: 32, Heads: 32, MLPWidth: 11008, SeqLength: 8192, VocabSize: 151936}
}

// TinyConfig is the config.json of a tiny model whose vocabulary has ordinary tokens.
func TinyConfig(o TinyOptions, ordinary int) *checkpoints.Config {
	used := ordinary + tokenizer.NumSpecial
	return &checkpoints.Config{
		Architectures: []string{checkpoints.Architecture}, ModelType: "qwen",
		VocabSize:  max(o.VocabSize, (used+127)/128*128), // padded like Qwen-7B's 151936
		HiddenSize: o.Hidden, NumHiddenLayers: o.Layers, NumAttentionHeads: o.Heads, KVChannels: o.Hidden / o.Heads,
		IntermediateSize: 2 * o.MLPWidth, LayerNormEpsilon: 1e-6, RotaryEmbBase: 10000, RotaryPct: 1,
		SeqLength: o.SeqLength, UseDynamicNTK: true, UseLogNAttn: true, NoBias: true,
	}
}

// tinyConfig is the validated config of o's model and how many ordinary tokens its
// vocabulary keeps (the demo vocabulary's ranks, all of them when VocabRanks is 0).
func tinyConfig(o TinyOptions) (*checkpoints.Config, int, error) {
	ordinary := o.VocabRanks
	if ordinary <= 0 || ordinary > tokenizer.DemoRanks {
		ordinary = tokenizer.DemoRanks
	}
	cfg := TinyConfig(o, ordinary)
	if err := cfg.Validate(); err != nil {
		return nil, 0, err
	}
	return cfg, ordinary, nil
}

// WriteTiny writes a tiny random model directory: config.json, generation_config.json,
// model.safetensors (bf16, weights ~ N(0, 0.02), norms 1) and the demo vocabulary as
// qwen.tiktoken. dir must be absent or empty (checkpoints.CheckOutDir).
func WriteTiny(dir string, o TinyOptions) (*checkpoints.Config, error) {
	if o.Hidden <= 0 || o.Heads <= 0 || o.Hidden%o.Heads != 0 || (o.Hidden/o.Heads)%2 != 0 || o.Layers <= 0 || o.MLPWidth <= 0 || o.SeqLength <= 0 {
		return nil, fmt.Errorf("model: tiny shape %+v: hidden must split into an even head size, and every size be positive", o)
	}
	if _, err := checkpoints.CheckOutDir(dir, "--out"); err != nil {
		return nil, err
	}
	vocab, err := tokenizer.DemoVocabulary(o.VocabRanks)
	if err != nil {
		return nil, err
	}
	cfg, ordinary, err := tinyConfig(o)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	tensors := randomTensors(cfg, o, ordinary)
	meta := map[string]string{"qwen_tune.kind": "tiny-random", "qwen_tune.seed": strconv.FormatUint(o.Seed, 10)}
	if _, err := checkpoints.WriteSharded(dir, "model", tensors, meta, 0); err != nil {
		return nil, err
	}
	if err := checkpoints.WriteBytes(filepath.Join(dir, tokenizer.VocabFile), vocab); err != nil {
		return nil, err
	}
	gen := checkpoints.ChatGenerationConfig()
	gen.EOSTokenID, gen.PadTokenID = ordinary, ordinary // <|endoftext|> follows the ordinary tokens
	if err := checkpoints.WriteJSON(filepath.Join(dir, "generation_config.json"), gen); err != nil {
		return nil, err
	}
	// config.json last: its presence marks a complete model directory.
	if err := checkpoints.WriteJSON(filepath.Join(dir, "config.json"), cfg); err != nil {
		return nil, err
	}
	return cfg, nil
}

// randomTensors are the model's tensors with generators of random bf16 values.
func randomTensors(cfg *checkpoints.Config, o TinyOptions, ordinary int) []checkpoints.Tensor {
	var tensors []checkpoints.Tensor
	for i, s := range checkpoints.ModelTensors(cfg, nil) {
		norm := len(s.Shape) == 1 && !strings.HasSuffix(s.Name, ".bias") // RMSNorm weights start at one
		std := func(int64) float64 { return 0.02 }
		if s.Name == checkpoints.LMHead {
			// Wide enough that logits can separate tokens (|logit| up to about 2 sqrt(hidden)):
			// with 0.02 a tiny model's logits stay within +-1.3 and LoRA could never fit data.
			wide := max(0.02, 2/math.Sqrt(float64(o.Hidden)))
			first := int64(ordinary) * int64(o.Hidden) // first element of the special rows
			std = func(e int64) float64 {
				if o.UntrainedSpecials && e >= first {
					return 0.02
				}
				return wide
			}
		}
		tensors = append(tensors, checkpoints.Tensor{Name: s.Name, DType: checkpoints.BF16, Shape: s.Shape, Gen: randomBF16(o.Seed, uint64(i), norm, std)})
	}
	return tensors
}

// RandomModel is WriteTiny's model held in memory (no directory, no vocabulary): the weights
// are generated in parallel, for benchmarks of a named shape.
func RandomModel(o TinyOptions) (*Model, error) {
	cfg, ordinary, err := tinyConfig(o)
	if err != nil {
		return nil, err
	}
	if err := CheckMemory(WeightBytes(cfg), fmt.Sprintf("a random model of %d parameters in bf16", cfg.ParamCount())); err != nil {
		return nil, err
	}
	tensors := randomTensors(cfg, o, ordinary)
	for i := range tensors {
		t := &tensors[i]
		t.Data = make([]byte, t.ByteSize())
		t.Gen(t.Data, 0)
		t.Gen = nil
	}
	return fromTensors(cfg, tensors)
}

// fromTensors builds a floating-point model from tensors held in memory.
func fromTensors(cfg *checkpoints.Config, tensors []checkpoints.Tensor) (*Model, error) {
	byName := map[string]checkpoints.Tensor{}
	for _, t := range tensors {
		byName[t.Name] = t
	}
	return build(cfg, nil, func(name string) (checkpoints.Tensor, error) {
		t, ok := byName[name]
		if !ok {
			return t, fmt.Errorf("model: no tensor %s", name)
		}
		return t, nil
	}, LoadOptions{})
}

// genBlock is how many elements share one random stream: blocks are generated in parallel
// and the bytes depend only on the seed, the tensor and the position.
const genBlock = 1 << 20

// randomBF16 generates bf16 weights ~ N(0, std(element index)) (or ones for a norm) for a streaming writer.
func randomBF16(seed, tensor uint64, ones bool, std func(element int64) float64) func(dst []byte, off int64) {
	return func(dst []byte, off int64) {
		first := off / 2
		n := int64(len(dst) / 2)
		blocks := int((first+n+genBlock-1)/genBlock - first/genBlock)
		var wg sync.WaitGroup
		for b := 0; b < blocks; b++ {
			wg.Add(1)
			go func(block int64) {
				defer wg.Done()
				r := rand.New(rand.NewPCG(seed, tensor<<40|uint64(block)))
				start := block * genBlock
				// Chunks start on block boundaries, so a block is only ever cut at its end.
				for e := start; e < min(start+genBlock, first+n); e++ {
					v := float32(1)
					if !ones {
						v = float32(std(e) * r.NormFloat64())
					}
					if e >= first {
						binary.LittleEndian.PutUint16(dst[2*(e-first):], checkpoints.F32ToBF16(v))
					}
				}
			}(first/genBlock + int64(b))
		}
		wg.Wait()
	}
}
