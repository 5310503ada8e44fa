package lora

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"gorgonia.org/tensor"

	"github.com/qwen-tune/qwen-tune/checkpoints"
	"github.com/qwen-tune/qwen-tune/model"
)

// File names of a PEFT adapter directory.
const (
	ConfigFile  = "adapter_config.json"
	WeightsFile = "adapter_model.safetensors"
)

// PEFTConfig is the adapter_config.json this package writes.
func (a *Adapter) PEFTConfig(baseModel string, modulesToSave []string) (checkpoints.AdapterConfig, error) {
	targets, err := json.Marshal(a.Config.Targets)
	if err != nil {
		return checkpoints.AdapterConfig{}, fmt.Errorf("lora: encoding the target modules %q: %w", a.Config.Targets, err)
	}
	var base *string
	if baseModel != "" {
		base = &baseModel
	}
	return checkpoints.AdapterConfig{
		PeftType: "LORA", TaskType: "CAUSAL_LM", R: a.Config.R, LoraAlpha: a.Config.Alpha, LoraDropout: a.Config.Dropout,
		TargetModules: targets, Bias: "none", BaseModelNameOrPath: base, ModulesToSave: modulesToSave, InferenceMode: true,
		TrainedOn: a.TrainedOn,
	}, nil
}

// Tensors is the adapter's content under PEFT's key names (float32), plus extra tensors
// (modules_to_save weights, already named).
func (a *Adapter) Tensors(extra ...checkpoints.Tensor) []checkpoints.Tensor {
	var ts []checkpoints.Tensor
	for _, l := range a.Layers {
		ts = append(ts, f32Tensor(l.KeyA(), l.A), f32Tensor(l.KeyB(), l.B))
	}
	return append(ts, extra...)
}

// f32Tensor is a parameter's value as an F32 tensor.
func f32Tensor(name string, p *model.Param) checkpoints.Tensor {
	return floatTensor(name, p.Value.Data().([]float32), p.Value.Shape())
}

// floatTensor is v of the given shape as an F32 tensor.
func floatTensor(name string, v []float32, shape []int) checkpoints.Tensor {
	return checkpoints.F32Tensor(name, shape64(shape), v)
}

// Save writes adapter_config.json and adapter_model.safetensors into dir (created if needed),
// each atomically. extra tensors are saved with the adapter (modules_to_save).
func (a *Adapter) Save(dir, baseModel string, modulesToSave []string, extra ...checkpoints.Tensor) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("lora: %w", err)
	}
	meta := map[string]string{"qwen_tune.format": "peft-lora", "qwen_tune.format_version": "1"}
	if err := checkpoints.WriteFile(filepath.Join(dir, WeightsFile), a.Tensors(extra...), meta); err != nil {
		return err
	}
	pc, err := a.PEFTConfig(baseModel, modulesToSave)
	if err != nil {
		return err
	}
	return checkpoints.WriteJSON(filepath.Join(dir, ConfigFile), pc)
}

// Load reads a PEFT LoRA adapter directory (written by this package or by PEFT) and attaches
// it to m. Every tensor must belong to a targeted layer of m with matching shapes; the error
// names the tensor and both shapes. Tensors of modules_to_save are returned by name for the
// caller to install.
func Load(dir string, m *model.Model) (*Adapter, map[string]checkpoints.Tensor, error) {
	cfgPath := filepath.Join(dir, ConfigFile)
	pc, err := checkpoints.ReadAdapterConfig(cfgPath)
	if err != nil {
		return nil, nil, err
	}
	targets := pc.Targets()
	match, err := targetMatcher(pc.TargetModules, targets)
	if err != nil {
		return nil, nil, fmt.Errorf("lora: %s: %w", cfgPath, err)
	}
	if err := unsupportedPEFT(cfgPath); err != nil {
		return nil, nil, err
	}
	if pc.FanInFanOut {
		return nil, nil, fmt.Errorf("lora: %s: fan_in_fan_out adapters are for Conv1D models, not Qwen's Linear layers", cfgPath)
	}
	if pc.Bias != "" && pc.Bias != "none" {
		return nil, nil, fmt.Errorf("lora: %s: bias %q is not supported (only \"none\")", cfgPath, pc.Bias)
	}
	ck, err := checkpoints.OpenFiles(dir, filepath.Join(dir, WeightsFile))
	if err != nil {
		return nil, nil, err
	}
	defer ck.Close()
	c := Config{R: pc.R, Alpha: pc.LoraAlpha, Dropout: pc.LoraDropout, Targets: targets}
	scale := c.Scale()
	rs, err := peftFlag(cfgPath, "use_rslora")
	if err != nil {
		return nil, nil, err
	}
	if rs {
		scale = c.Alpha / math.Sqrt(float64(c.R)) // rank-stabilised LoRA
	}
	a := &Adapter{Config: c, TrainedOn: pc.TrainedOn}
	used := map[string]bool{}
	for _, s := range m.Projections() {
		if !match(s.Name, s.Target) {
			continue
		}
		out, in, err := projShape(*s.P, s.Name)
		if err != nil {
			return nil, nil, err
		}
		l := &Layer{Module: s.Name, Base: *s.P, Scale: scale, Dropout: c.Dropout, key: uint64(len(a.Layers) + 1)}
		if l.A, err = readParam(ck, l.KeyA(), c.R, in); err != nil {
			return nil, nil, fmt.Errorf("lora: %s: %w", dir, err)
		}
		if l.B, err = readParam(ck, l.KeyB(), out, c.R); err != nil {
			return nil, nil, fmt.Errorf("lora: %s: %w", dir, err)
		}
		used[l.KeyA()], used[l.KeyB()] = true, true
		a.Layers = append(a.Layers, l)
	}
	extra := map[string]checkpoints.Tensor{}
	for _, name := range ck.Names() {
		if used[name] {
			continue
		}
		t, err := ck.Tensor(name)
		if err != nil {
			return nil, nil, err
		}
		if !isSavedModule(name, pc.ModulesToSave) && !strings.Contains(name, ".token_adapter.") {
			return nil, nil, fmt.Errorf("lora: %s: tensor %q belongs to no targeted layer of this %d-layer model", dir, name, len(m.Blocks))
		}
		t.Data = slices.Clone(t.Data) // outlive the mapping
		extra[name] = t
	}
	for _, l := range a.Layers {
		*slotOf(m, l.Module) = l
	}
	return a, extra, nil
}

// targetMatcher follows PEFT's target_modules rules: a list entry matches a module whose name
// equals it or ends with "." + it (so "c_proj" matches attn.c_proj and mlp.c_proj); a single
// string is a regular expression that must match the whole module name.
func targetMatcher(raw json.RawMessage, targets []string) (func(module, short string) bool, error) {
	var re string
	if json.Unmarshal(raw, &re) == nil {
		rx, err := regexp.Compile("^(?:" + re + ")$")
		if err != nil {
			return nil, fmt.Errorf("target_modules %q is not a valid regular expression: %v", re, err)
		}
		return func(module, _ string) bool { return rx.MatchString(module) }, nil
	}
	for _, t := range targets {
		if !slices.Contains(Targets, t) && !strings.Contains(t, ".") {
			return nil, fmt.Errorf("target module %q matches no layer of a Qwen model (expected among %s)", t, strings.Join(Targets, ", "))
		}
	}
	return func(module, short string) bool {
		for _, t := range targets {
			if t == short || module == t || strings.HasSuffix(module, "."+t) {
				return true
			}
		}
		return false
	}, nil
}

// peftFlag reads a boolean setting of adapter_config.json that checkpoints.AdapterConfig does
// not model.
func peftFlag(path, key string) (bool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return false, fmt.Errorf("lora: %w", err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return false, fmt.Errorf("lora: %s is not a JSON object: %w", path, err)
	}
	var v bool
	if raw, ok := m[key]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &v); err != nil {
			return false, fmt.Errorf("lora: %s: %s must be true or false, got %s", path, key, raw)
		}
	}
	return v, nil
}

// unsupportedPEFT rejects PEFT features that change the math this package applies.
func unsupportedPEFT(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	for _, key := range []string{"rank_pattern", "alpha_pattern", "layers_to_transform", "use_dora"} {
		raw, ok := m[key]
		if !ok {
			continue
		}
		switch strings.TrimSpace(string(raw)) {
		case "null", "{}", "[]", "false":
			continue
		}
		return fmt.Errorf("lora: %s: %s is set; adapters with per-layer ranks, layer subsets or DoRA are not supported", path, key)
	}
	return nil
}

// isSavedModule reports whether an adapter tensor is a modules_to_save weight, which PEFT
// stores as base_model.model.<module>.weight (older versions add .modules_to_save.default).
func isSavedModule(name string, modules []string) bool {
	for _, m := range modules {
		if strings.Contains(name, "."+m+".") || strings.HasPrefix(name, keyPrefix+m+".") {
			return true
		}
	}
	return false
}

func slotOf(m *model.Model, module string) *model.Projection {
	for _, s := range m.Projections() {
		if s.Name == module {
			return s.P
		}
	}
	return nil
}

func readParam(ck *checkpoints.Checkpoint, name string, shape ...int) (*model.Param, error) {
	info, _, ok := ck.Info(name)
	if !ok {
		return nil, fmt.Errorf("tensor %q is missing (the adapter's config targets this layer)", name)
	}
	want := []int64{int64(shape[0]), int64(shape[1])}
	if !slices.Equal(info.Shape, want) {
		return nil, fmt.Errorf("tensor %q has shape %v but this model needs %v: the adapter was trained for a model of another shape, or another r", name, info.Shape, want)
	}
	v, err := ck.Float32(name)
	if err != nil {
		return nil, err
	}
	return &model.Param{Name: strings.TrimPrefix(name, keyPrefix), Value: tensor.New(tensor.WithShape(shape...), tensor.WithBacking(v)), Train: true}, nil
}
