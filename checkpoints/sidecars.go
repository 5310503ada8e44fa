package checkpoints

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
)

// GPTQConfig is AutoGPTQ's quantize_config.json, also carried in config.json as
// `quantization_config` (with quant_method "gptq").
type GPTQConfig struct {
	Bits              int     `json:"bits"`
	GroupSize         int     `json:"group_size"`
	DampPercent       float64 `json:"damp_percent"`
	DescAct           bool    `json:"desc_act"`
	StaticGroups      bool    `json:"static_groups"`
	Sym               bool    `json:"sym"`
	TrueSequential    bool    `json:"true_sequential"`
	QuantMethod       string  `json:"quant_method,omitempty"`
	ModelNameOrPath   *string `json:"model_name_or_path"`
	ModelFileBaseName *string `json:"model_file_base_name"`
}

// Validate checks the settings against what the format allows.
func (g *GPTQConfig) Validate() error {
	switch {
	case g.QuantMethod != "" && g.QuantMethod != "gptq":
		return fmt.Errorf("quant_method %q is not supported (expected \"gptq\")", g.QuantMethod)
	case g.Bits != 2 && g.Bits != 3 && g.Bits != 4 && g.Bits != 8:
		return fmt.Errorf("bits must be 2, 3, 4 or 8, got %d", g.Bits)
	case g.GroupSize != -1 && g.GroupSize <= 0:
		return fmt.Errorf("group_size must be positive or -1 (one group per row), got %d", g.GroupSize)
	case !(g.DampPercent > 0 && g.DampPercent < 1):
		return fmt.Errorf("damp_percent must be in (0, 1), got %g", g.DampPercent)
	}
	return nil
}

// AdapterConfig is a PEFT adapter_config.json for LoRA.
type AdapterConfig struct {
	PeftType            string          `json:"peft_type"`
	TaskType            string          `json:"task_type"`
	R                   int             `json:"r"`
	LoraAlpha           float64         `json:"lora_alpha"`
	LoraDropout         float64         `json:"lora_dropout"`
	TargetModules       json.RawMessage `json:"target_modules"`
	Bias                string          `json:"bias"`
	BaseModelNameOrPath *string         `json:"base_model_name_or_path"`
	ModulesToSave       []string        `json:"modules_to_save"`
	FanInFanOut         bool            `json:"fan_in_fan_out"`
	InferenceMode       bool            `json:"inference_mode"`
	// TrainableTokenIndices is PEFT's trainable_token_indices: a list of token ids (of the
	// embedding) or a map from module name to ids.
	TrainableTokenIndices json.RawMessage `json:"trainable_token_indices,omitempty"`
	// TrainedOn is qwen-tune's record of the weights the adapter was trained on (absent in
	// adapters from elsewhere).
	TrainedOn *AdapterBase `json:"qwen_tune_base,omitempty"`
}

// AdapterBase says what weights an adapter was trained on: a GPTQ model's bits and group
// size (QuantMethod "gptq"), or a floating-point model's dtype (QuantMethod "").
type AdapterBase struct {
	QuantMethod string `json:"quant_method,omitempty"`
	Bits        int    `json:"bits,omitempty"`
	GroupSize   int    `json:"group_size,omitempty"`
	DType       string `json:"torch_dtype,omitempty"`
}

// String is the base in words: "a GPTQ 4-bit model (group size 128)" or "a floating-point
// model (bfloat16)".
func (b AdapterBase) String() string {
	if b.QuantMethod != "" {
		return fmt.Sprintf("a GPTQ %d-bit model (group size %d)", b.Bits, b.GroupSize)
	}
	if b.DType != "" {
		return fmt.Sprintf("a floating-point model (%s)", b.DType)
	}
	return "a floating-point model"
}

// TokenIndices returns trainable_token_indices by module ("embedding" for PEFT's plain
// list form); nil when absent.
func (a *AdapterConfig) TokenIndices() (map[string][]int, error) {
	if len(a.TrainableTokenIndices) == 0 || string(a.TrainableTokenIndices) == "null" {
		return nil, nil
	}
	var list []int
	if json.Unmarshal(a.TrainableTokenIndices, &list) == nil {
		return map[string][]int{"embedding": list}, nil
	}
	var byModule map[string][]int
	if err := json.Unmarshal(a.TrainableTokenIndices, &byModule); err != nil {
		return nil, fmt.Errorf("expected a list of token ids or a map of module names to lists, got %s", a.TrainableTokenIndices)
	}
	return byModule, nil
}

// Targets returns target_modules as a list; PEFT also allows one regular expression, which
// is returned as a single entry.
func (a *AdapterConfig) Targets() []string {
	var list []string
	if json.Unmarshal(a.TargetModules, &list) == nil {
		return list
	}
	var re string
	if json.Unmarshal(a.TargetModules, &re) == nil {
		return []string{re}
	}
	return nil
}

// Scale is alpha / r, the factor on B A.
func (a *AdapterConfig) Scale() float64 { return a.LoraAlpha / float64(a.R) }

// readJSONFile decodes path into v, naming the file and key in errors.
func readJSONFile(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("checkpoints: %w", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return jsonError(path, err)
	}
	return nil
}

// jsonError turns a decoding error into a ConfigError naming the file and, for a value of
// the wrong type, the key.
func jsonError(file string, err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return &ConfigError{File: file, Key: te.Field, Msg: fmt.Sprintf("expected %s, got a JSON %s", jsonKind(te.Type.Kind().String()), te.Value)}
	}
	return &ConfigError{File: file, Msg: "not valid JSON: " + err.Error()}
}

// ReadGPTQConfig reads quantize_config.json.
func ReadGPTQConfig(path string) (*GPTQConfig, error) {
	var g GPTQConfig
	if err := readJSONFile(path, &g); err != nil {
		return nil, err
	}
	if err := g.Validate(); err != nil {
		return nil, &ConfigError{File: path, Msg: err.Error()}
	}
	return &g, nil
}

// ReadAdapterConfig reads a PEFT adapter_config.json and checks it is a LoRA adapter.
func ReadAdapterConfig(path string) (*AdapterConfig, error) {
	var a AdapterConfig
	if err := readJSONFile(path, &a); err != nil {
		return nil, err
	}
	switch {
	case a.PeftType != "LORA":
		return nil, &ConfigError{File: path, Key: "peft_type", Msg: fmt.Sprintf("expected \"LORA\", got %q", a.PeftType)}
	case a.R <= 0:
		return nil, &ConfigError{File: path, Key: "r", Msg: fmt.Sprintf("must be a positive integer, got %d", a.R)}
	case len(a.Targets()) == 0:
		return nil, &ConfigError{File: path, Key: "target_modules", Msg: "must be a list of module names or one regular expression"}
	}
	return &a, nil
}
