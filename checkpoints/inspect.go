package checkpoints

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Report describes a model, GPTQ or LoRA directory, as `qwen-tune inspect` prints it.
type Report struct {
	Dir          string            `json:"dir"`
	Kind         string            `json:"kind"` // "model", "gptq" or "lora"
	Architecture string            `json:"architecture,omitempty"`
	Config       *ConfigSummary    `json:"config,omitempty"`
	Parameters   int64             `json:"parameters"`
	Tensors      int               `json:"tensors"`
	DTypes       map[string]int64  `json:"dtype_bytes"`
	Shards       []ShardSummary    `json:"shards"`
	TotalBytes   int64             `json:"total_bytes"`
	Metadata     map[string]string `json:"metadata,omitempty"`
	GPTQ         *GPTQConfig       `json:"gptq,omitempty"`
	QuantLinears int               `json:"quantized_linears,omitempty"`
	LoRA         *LoRASummary      `json:"lora,omitempty"`
	Training     *TrainingSummary  `json:"training,omitempty"` // a training checkpoint's state
	Tokenizer    bool              `json:"has_tokenizer"`
	Generation   *GenerationConfig `json:"generation,omitempty"`
}

// ConfigSummary is the shape of the model.
type ConfigSummary struct {
	Layers        int  `json:"layers"`
	Hidden        int  `json:"hidden_size"`
	Heads         int  `json:"heads"`
	HeadDim       int  `json:"head_dim"`
	MLPWidth      int  `json:"mlp_width"`
	Vocab         int  `json:"vocab_size"`
	SeqLength     int  `json:"seq_length"`
	DynamicNTK    bool `json:"use_dynamic_ntk"`
	LogNAttention bool `json:"use_logn_attn"`
}

// ShardSummary is one safetensors file.
type ShardSummary struct {
	File    string `json:"file"`
	Tensors int    `json:"tensors"`
	Bytes   int64  `json:"bytes"`
}

// LoRASummary is an adapter's settings.
type LoRASummary struct {
	R             int      `json:"r"`
	Alpha         float64  `json:"alpha"`
	Scale         float64  `json:"scale"`
	Dropout       float64  `json:"dropout"`
	Targets       []string `json:"target_modules"`
	ModulesToSave []string `json:"modules_to_save,omitempty"`
	BaseModel     string   `json:"base_model,omitempty"`
	// TrainedOn is the kind of base it was trained on, where recorded (GPTQ bits and group
	// size, or a floating-point dtype).
	TrainedOn     *AdapterBase `json:"trained_on,omitempty"`
	AdaptedLayers int          `json:"adapted_linears"`
	// TrainableTokens are the token ids whose rows of each module (wte, lm_head) are
	// trained (PEFT's trainable_token_indices).
	TrainableTokens map[string][]int `json:"trainable_token_indices,omitempty"`
}

// Inspect reads and validates a directory's configs and safetensors headers (no tensor data).
// A training checkpoint (an adapter with trainer_state.json) has every file validated: the
// adapter, the trained parameters and the optimizer state.
func Inspect(dir string) (*Report, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("checkpoints: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("checkpoints: %s is not a directory; give the model, GPTQ or adapter directory", dir)
	}
	if exists(filepath.Join(dir, TrainerStateFile)) {
		if !exists(filepath.Join(dir, "adapter_config.json")) {
			return nil, fmt.Errorf("checkpoints: %s has %s but no adapter_config.json: the checkpoint is incomplete; resume from another one", dir, TrainerStateFile)
		}
		r, err := inspectAdapter(dir)
		if err != nil {
			return nil, err
		}
		return r, inspectTraining(dir, r)
	}
	if exists(filepath.Join(dir, "adapter_config.json")) {
		return inspectAdapter(dir)
	}
	r := &Report{Dir: dir, Kind: "model"}
	cfg, err := ReadConfig(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, err
	}
	r.Architecture = cfg.Architectures[0]
	r.Config = &ConfigSummary{Layers: cfg.NumHiddenLayers, Hidden: cfg.HiddenSize, Heads: cfg.NumAttentionHeads,
		HeadDim: cfg.KVChannels, MLPWidth: cfg.MLPWidth(), Vocab: cfg.VocabSize, SeqLength: cfg.SeqLength,
		DynamicNTK: cfg.UseDynamicNTK, LogNAttention: cfg.UseLogNAttn}
	r.Parameters = cfg.ParamCount()
	if g, err := ReadGenerationConfig(filepath.Join(dir, "generation_config.json")); err != nil {
		return nil, err
	} else if exists(filepath.Join(dir, "generation_config.json")) {
		r.Generation = g
	}
	r.Tokenizer = exists(filepath.Join(dir, "qwen.tiktoken"))
	qc := filepath.Join(dir, "quantize_config.json")
	switch {
	case exists(qc):
		if r.GPTQ, err = ReadGPTQConfig(qc); err != nil {
			return nil, err
		}
	case cfg.QuantizationConfig != nil:
		r.GPTQ = cfg.QuantizationConfig
	}
	ck, err := OpenDir(dir)
	if err != nil {
		return nil, err
	}
	defer ck.Close()
	r.fillTensors(ck)
	if r.GPTQ != nil {
		r.Kind = "gptq"
		for _, n := range ck.Names() {
			if strings.HasSuffix(n, ".qweight") {
				r.QuantLinears++
			}
		}
		if r.QuantLinears == 0 {
			return nil, fmt.Errorf("checkpoints: %s has a GPTQ config but no *.qweight tensors", dir)
		}
		return r, nil
	}
	if err := CheckTensors(cfg, nil, ck); err != nil {
		return nil, err
	}
	return r, nil
}

func inspectAdapter(dir string) (*Report, error) {
	a, err := ReadAdapterConfig(filepath.Join(dir, "adapter_config.json"))
	if err != nil {
		return nil, err
	}
	weights := filepath.Join(dir, "adapter_model.safetensors")
	if !exists(weights) {
		if exists(filepath.Join(dir, "adapter_model.bin")) {
			return nil, fmt.Errorf("checkpoints: %s holds adapter_model.bin (pickle); only adapter_model.safetensors is read: re-save the adapter with safe_serialization=True", dir)
		}
		return nil, fmt.Errorf("checkpoints: %s has adapter_config.json but no adapter_model.safetensors", dir)
	}
	ck, err := OpenFiles(dir, weights)
	if err != nil {
		return nil, err
	}
	defer ck.Close()
	r := &Report{Dir: dir, Kind: "lora"}
	r.fillTensors(ck)
	for _, info := range ck.Files[0].Header.Tensors {
		r.Parameters += info.NumElements()
	}
	lr := &LoRASummary{R: a.R, Alpha: a.LoraAlpha, Scale: a.Scale(), Dropout: a.LoraDropout,
		Targets: a.Targets(), ModulesToSave: a.ModulesToSave, TrainedOn: a.TrainedOn}
	if a.BaseModelNameOrPath != nil {
		lr.BaseModel = *a.BaseModelNameOrPath
	}
	tokenRows := 0
	for _, n := range ck.Names() {
		if strings.HasSuffix(n, ".lora_A.weight") {
			lr.AdaptedLayers++
		}
		if strings.HasSuffix(n, ".token_adapter.trainable_tokens_delta") {
			tokenRows++
		}
	}
	if lr.TrainableTokens, err = a.TokenIndices(); err != nil {
		return nil, &ConfigError{File: filepath.Join(dir, "adapter_config.json"), Key: "trainable_token_indices", Msg: err.Error()}
	}
	if tokenRows > 0 && len(lr.TrainableTokens) == 0 {
		return nil, fmt.Errorf("checkpoints: %s has trainable-token rows but adapter_config.json has no trainable_token_indices saying which tokens they are", dir)
	}
	r.LoRA = lr
	return r, nil
}

func (r *Report) fillTensors(ck *Checkpoint) {
	r.DTypes = map[string]int64{}
	for _, f := range ck.Files {
		s := ShardSummary{File: filepath.Base(f.Path), Tensors: len(f.Header.Tensors)}
		for _, t := range f.Header.Tensors {
			s.Bytes += t.End - t.Begin
			r.DTypes[string(t.DType)] += t.End - t.Begin
		}
		r.Tensors += s.Tensors
		r.TotalBytes += s.Bytes
		r.Shards = append(r.Shards, s)
		if r.Metadata == nil && len(f.Header.Metadata) > 0 {
			r.Metadata = f.Header.Metadata
		}
	}
	sort.Slice(r.Shards, func(i, j int) bool { return r.Shards[i].File < r.Shards[j].File })
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return !errors.Is(err, os.ErrNotExist)
}
