package lora

import (
	"fmt"
	"slices"
	"strings"

	"gorgonia.org/tensor"

	"github.com/qwen-tune/qwen-tune/checkpoints"
	"github.com/qwen-tune/qwen-tune/model"
)

// SaveModules are the modules that may be trained in full and saved with the adapter
// (PEFT's modules_to_save): the embedding and the output head.
var SaveModules = map[string]string{"wte": checkpoints.Embedding, "lm_head": checkpoints.LMHead}

// ModuleTensorNames maps --modules-to-save names (wte, lm_head) to checkpoint tensor names.
func ModuleTensorNames(modules []string) ([]string, error) {
	var out []string
	for _, m := range modules {
		name, ok := SaveModules[m]
		if !ok {
			return nil, fmt.Errorf("lora: --modules-to-save %q: only wte and lm_head can be trained in full", m)
		}
		out = append(out, name)
	}
	return out, nil
}

// savedKey is PEFT's key of a modules_to_save weight: base_model.model.<module>.modules_to_save.weight.
func savedKey(tensorName string) string {
	return keyPrefix + strings.TrimSuffix(tensorName, ".weight") + ".modules_to_save.weight"
}

// ModuleParams returns the model's trainable full modules (loaded with LoadOptions.Train).
func ModuleParams(m *model.Model, modules []string) ([]*model.Param, error) {
	var ps []*model.Param
	for _, mod := range modules {
		var p *model.Param
		switch mod {
		case "wte":
			t, ok := m.Embed.(*model.Table)
			if !ok {
				return nil, fmt.Errorf("lora: wte cannot be trained in full together with special-token rows")
			}
			p = t.Weight
		case "lm_head":
			d, ok := m.Head.(*model.Dense)
			if !ok {
				return nil, fmt.Errorf("lora: lm_head cannot be trained in full together with special-token rows")
			}
			p = d.Weight
		default:
			return nil, fmt.Errorf("lora: --modules-to-save %q: only wte and lm_head can be trained in full", mod)
		}
		if !p.Train {
			return nil, fmt.Errorf("lora: %s was not loaded as a trainable float32 tensor", p.Name)
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// ModuleTensors are full-module weights under PEFT's modules_to_save keys.
func ModuleTensors(ps []*model.Param) []checkpoints.Tensor {
	var ts []checkpoints.Tensor
	for _, p := range ps {
		ts = append(ts, f32Tensor(savedKey(p.Name), p))
	}
	return ts
}

// installModules replaces wte / lm_head with weights saved as modules_to_save.
func installModules(m *model.Model, extra map[string]checkpoints.Tensor) ([]*model.Param, error) {
	var installed []*model.Param
	for mod, name := range SaveModules {
		t, ok := extra[savedKey(name)]
		if !ok {
			continue
		}
		want := []int64{int64(m.Config.VocabSize), int64(m.Config.HiddenSize)}
		if !slices.Equal(t.Shape, want) {
			return nil, fmt.Errorf("lora: tensor %q has shape %v but this model's %s is %v", t.Name, t.Shape, mod, want)
		}
		v, err := t.Float32()
		if err != nil {
			return nil, err
		}
		p := &model.Param{Name: name, Value: tensor.New(tensor.WithShape(int(want[0]), int(want[1])), tensor.WithBacking(v))}
		if mod == "wte" {
			m.Embed = &model.Table{Weight: p}
		} else {
			m.Head = &model.Dense{Weight: p}
		}
		delete(extra, t.Name)
		installed = append(installed, p)
	}
	return installed, nil
}
