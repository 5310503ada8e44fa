package checkpoints

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Architecture is the only `architectures` entry this project runs: Qwen-7B v1 (2023).
const Architecture = "QWenLMHeadModel"

// Config is a Qwen-7B `config.json` (QWenLMHeadModel). Keys this package does not model are
// kept in Extra and written back unchanged.
type Config struct {
	Architectures      []string                   `json:"architectures"`
	ModelType          string                     `json:"model_type"`
	VocabSize          int                        `json:"vocab_size"`
	HiddenSize         int                        `json:"hidden_size"`
	NumHiddenLayers    int                        `json:"num_hidden_layers"`
	NumAttentionHeads  int                        `json:"num_attention_heads"`
	KVChannels         int                        `json:"kv_channels"`
	IntermediateSize   int                        `json:"intermediate_size"`
	LayerNormEpsilon   float64                    `json:"layer_norm_epsilon"`
	RotaryEmbBase      float64                    `json:"rotary_emb_base"`
	RotaryPct          float64                    `json:"rotary_pct"`
	SeqLength          int                        `json:"seq_length"`
	UseDynamicNTK      bool                       `json:"use_dynamic_ntk"`
	UseLogNAttn        bool                       `json:"use_logn_attn"`
	NoBias             bool                       `json:"no_bias"`
	TieWordEmbeddings  bool                       `json:"tie_word_embeddings"`
	QuantizationConfig *GPTQConfig                `json:"quantization_config,omitempty"`
	Extra              map[string]json.RawMessage `json:"-"`
}

// MLPWidth is the width of each MLP branch (w1, w2): half of intermediate_size, as in Qwen.
func (c *Config) MLPWidth() int { return c.IntermediateSize / 2 }

// ProjectionSize is heads x head dim, the width of each of q, k and v.
func (c *Config) ProjectionSize() int { return c.NumAttentionHeads * c.KVChannels }

// ConfigError is a config.json that cannot be used; Key is empty for the file as a whole.
type ConfigError struct {
	File, Key, Msg string
}

func (e *ConfigError) Error() string {
	if e.Key != "" {
		return fmt.Sprintf("checkpoints: %s: %s: %s", e.File, e.Key, e.Msg)
	}
	return fmt.Sprintf("checkpoints: %s: %s", e.File, e.Msg)
}

// oldKeys are the key names of Qwen's pre-release configs, which this project does not guess at.
var oldKeys = []string{"n_embd", "n_layer", "n_head", "n_positions", "n_inner", "ffn_hidden_size", "padded_vocab_size"}

// configDefaults are QWenConfig's defaults for keys a config may leave out.
func configDefaults() Config {
	return Config{
		IntermediateSize: 22016, LayerNormEpsilon: 1e-6, RotaryEmbBase: 10000, RotaryPct: 1.0,
		SeqLength: 8192, UseDynamicNTK: true, UseLogNAttn: true, NoBias: true,
	}
}

// ReadConfig reads and validates a Qwen config.json.
func ReadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("checkpoints: %w", err)
	}
	return ParseConfig(b, path)
}

// ParseConfig decodes and validates config.json bytes; file names the source in errors.
func ParseConfig(b []byte, file string) (*Config, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, &ConfigError{File: file, Msg: "not a JSON object: " + err.Error()}
	}
	var old []string
	for _, k := range oldKeys {
		if _, ok := raw[k]; ok {
			old = append(old, k)
		}
	}
	if len(old) > 0 {
		return nil, &ConfigError{File: file, Msg: fmt.Sprintf("uses the old Qwen key names %s; use the released config.json of Qwen-7B, whose keys are hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, vocab_size", strings.Join(old, ", "))}
	}
	for _, k := range []string{"architectures", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"} {
		if _, ok := raw[k]; !ok {
			return nil, &ConfigError{File: file, Key: k, Msg: "missing (a Qwen-7B config.json has it)"}
		}
	}
	c := configDefaults()
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, jsonError(file, err)
	}
	if _, ok := raw["kv_channels"]; !ok && c.NumAttentionHeads > 0 {
		c.KVChannels = c.HiddenSize / c.NumAttentionHeads
	}
	c.Extra = map[string]json.RawMessage{}
	known := knownConfigKeys()
	for k, v := range raw {
		if !known[k] {
			c.Extra[k] = v
		}
	}
	if err := c.Validate(); err != nil {
		var ce *ConfigError
		if errors.As(err, &ce) {
			ce.File = file
		}
		return nil, err
	}
	return &c, nil
}

func jsonKind(goKind string) string {
	switch goKind {
	case "int", "int64", "float64":
		return "a number"
	case "bool":
		return "true or false"
	case "string":
		return "a string"
	case "slice":
		return "a list"
	case "struct", "map", "ptr":
		return "an object"
	}
	return goKind
}

// Validate checks that the config describes a model this project can run.
func (c *Config) Validate() error {
	bad := func(key, format string, args ...any) error {
		return &ConfigError{File: "config.json", Key: key, Msg: fmt.Sprintf(format, args...)}
	}
	if len(c.Architectures) != 1 || c.Architectures[0] != Architecture {
		return bad("architectures", "expected [%q] (Qwen-7B / Qwen-7B-Chat, 2023), got %q; Qwen1.5, Qwen2 and other families are not supported", Architecture, c.Architectures)
	}
	if c.ModelType != "" && c.ModelType != "qwen" {
		return bad("model_type", "expected \"qwen\", got %q", c.ModelType)
	}
	for _, p := range []struct {
		key string
		v   int
	}{{"vocab_size", c.VocabSize}, {"hidden_size", c.HiddenSize}, {"num_hidden_layers", c.NumHiddenLayers}, {"num_attention_heads", c.NumAttentionHeads}, {"kv_channels", c.KVChannels}, {"intermediate_size", c.IntermediateSize}, {"seq_length", c.SeqLength}} {
		if p.v <= 0 {
			return bad(p.key, "must be a positive integer, got %d", p.v)
		}
	}
	if c.NumAttentionHeads*c.KVChannels != c.HiddenSize {
		return bad("kv_channels", "num_attention_heads (%d) x kv_channels (%d) must equal hidden_size (%d)", c.NumAttentionHeads, c.KVChannels, c.HiddenSize)
	}
	if c.KVChannels%2 != 0 {
		return bad("kv_channels", "must be even for rotary embeddings, got %d", c.KVChannels)
	}
	if c.IntermediateSize%2 != 0 {
		return bad("intermediate_size", "must be even (each MLP branch is half of it), got %d", c.IntermediateSize)
	}
	if c.RotaryPct != 1.0 {
		return bad("rotary_pct", "only 1.0 (rotary on the whole head, as in Qwen-7B) is supported, got %g", c.RotaryPct)
	}
	if !(c.LayerNormEpsilon > 0 && c.LayerNormEpsilon < 1) {
		return bad("layer_norm_epsilon", "must be in (0, 1), got %g", c.LayerNormEpsilon)
	}
	if !(c.RotaryEmbBase > 1) {
		return bad("rotary_emb_base", "must be > 1, got %g", c.RotaryEmbBase)
	}
	if !c.NoBias {
		return bad("no_bias", "only true (bias on c_attn alone, as in Qwen-7B) is supported")
	}
	if c.TieWordEmbeddings {
		return bad("tie_word_embeddings", "Qwen-7B keeps wte and lm_head separate; true is not supported")
	}
	if c.QuantizationConfig != nil {
		if err := c.QuantizationConfig.Validate(); err != nil {
			return bad("quantization_config", "%v", err)
		}
	}
	return nil
}

func knownConfigKeys() map[string]bool {
	known := map[string]bool{}
	for _, f := range configFieldNames() {
		known[f] = true
	}
	return known
}

func configFieldNames() []string {
	return []string{"architectures", "model_type", "vocab_size", "hidden_size", "num_hidden_layers",
		"num_attention_heads", "kv_channels", "intermediate_size", "layer_norm_epsilon", "rotary_emb_base",
		"rotary_pct", "seq_length", "use_dynamic_ntk", "use_logn_attn", "no_bias", "tie_word_embeddings",
		"quantization_config"}
}

// MarshalJSON writes the modelled keys and every kept unknown key, sorted by name, as
// transformers does.
func (c Config) MarshalJSON() ([]byte, error) {
	type plain Config // no methods: avoids recursion
	b, err := json.Marshal(plain(c))
	if err != nil {
		return nil, err
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	for k, v := range c.Extra {
		if _, ok := m[k]; !ok {
			m[k] = v
		}
	}
	keys := sortedKeys(m)
	var buf bytes.Buffer
	buf.WriteByte('{')
	for i, k := range keys {
		if i > 0 {
			buf.WriteByte(',')
		}
		kb, err := json.Marshal(k)
		if err != nil {
			return nil, fmt.Errorf("checkpoints: config key %q: %w", k, err)
		}
		buf.Write(kb)
		buf.WriteByte(':')
		buf.Write(m[k])
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

// ParamCount is the number of parameters of the float model the config describes.
func (c *Config) ParamCount() int64 {
	var n int64
	for _, s := range ModelTensors(c, nil) {
		n += s.NumElements()
	}
	return n
}

// GenerationConfig is Qwen's generation_config.json.
type GenerationConfig struct {
	ChatFormat          string  `json:"chat_format"`
	EOSTokenID          int     `json:"eos_token_id"`
	PadTokenID          int     `json:"pad_token_id"`
	StopWordsIDs        [][]int `json:"stop_words_ids,omitempty"`
	MaxWindowSize       int     `json:"max_window_size"`
	MaxNewTokens        int     `json:"max_new_tokens"`
	DoSample            bool    `json:"do_sample"`
	TopK                int     `json:"top_k"`
	TopP                float64 `json:"top_p"`
	Temperature         float64 `json:"temperature"`
	RepetitionPenalty   float64 `json:"repetition_penalty"`
	TransformersVersion string  `json:"transformers_version,omitempty"`
}

// DefaultGenerationConfig is what a generation_config.json leaves unsaid: transformers'
// defaults plus Qwen's chat format and window.
func DefaultGenerationConfig() GenerationConfig {
	return GenerationConfig{
		ChatFormat: "chatml", EOSTokenID: 151643, PadTokenID: 151643, MaxWindowSize: 6144,
		MaxNewTokens: 512, DoSample: true, TopK: 50, TopP: 1.0, Temperature: 1.0, RepetitionPenalty: 1.0,
	}
}

// ChatGenerationConfig is Qwen-7B-Chat's generation_config.json.
func ChatGenerationConfig() GenerationConfig {
	g := DefaultGenerationConfig()
	g.TopK, g.TopP, g.RepetitionPenalty = 0, 0.8, 1.1
	g.TransformersVersion = "4.31.0"
	return g
}

// ReadGenerationConfig reads generation_config.json; a missing file gives the defaults.
func ReadGenerationConfig(path string) (*GenerationConfig, error) {
	g := DefaultGenerationConfig()
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return &g, nil
	}
	if err := readJSONFile(path, &g); err != nil {
		return nil, err
	}
	if err := g.Validate(); err != nil {
		var ce *ConfigError
		if errors.As(err, &ce) {
			ce.File = path
		}
		return nil, err
	}
	return &g, nil
}

// Validate checks the sampling settings.
func (g *GenerationConfig) Validate() error {
	bad := func(key, format string, args ...any) error {
		return &ConfigError{File: "generation_config.json", Key: key, Msg: fmt.Sprintf(format, args...)}
	}
	switch {
	case g.ChatFormat != "chatml" && g.ChatFormat != "raw":
		return bad("chat_format", "expected \"chatml\" or \"raw\", got %q", g.ChatFormat)
	case g.TopK < 0:
		return bad("top_k", "must be >= 0 (0 turns it off), got %d", g.TopK)
	case !(g.TopP > 0 && g.TopP <= 1):
		return bad("top_p", "must be in (0, 1], got %g", g.TopP)
	case g.Temperature < 0:
		return bad("temperature", "must be >= 0, got %g", g.Temperature)
	case !(g.RepetitionPenalty > 0):
		return bad("repetition_penalty", "must be > 0 (1 turns it off), got %g", g.RepetitionPenalty)
	case g.MaxWindowSize <= 0:
		return bad("max_window_size", "must be positive, got %d", g.MaxWindowSize)
	case g.MaxNewTokens < 0:
		return bad("max_new_tokens", "must be >= 0, got %d", g.MaxNewTokens)
	}
	return nil
}

// ReadModelConfigs reads config.json and generation_config.json from a model directory.
func ReadModelConfigs(dir string) (*Config, *GenerationConfig, error) {
	c, err := ReadConfig(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, nil, err
	}
	g, err := ReadGenerationConfig(filepath.Join(dir, "generation_config.json"))
	if err != nil {
		return nil, nil, err
	}
	return c, g, nil
}
