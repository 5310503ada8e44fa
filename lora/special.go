package lora

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	"github.com/qwen-tune/qwen-tune/autograd"
	"github.com/qwen-tune/qwen-tune/checkpoints"
	"github.com/qwen-tune/qwen-tune/model"
	"github.com/qwen-tune/qwen-tune/tokenizer"
)

// SpecialTokens trains only the special-token rows of wte and lm_head: a base model never saw
// <|im_start|> and <|im_end|> in pre-training, and without learning them a LoRA-tuned base
// model does not stop. Two [S, H] deltas (S = 208 specials) replace training two full
// [vocab, H] matrices. They are saved in PEFT's trainable-tokens layout:
// base_model.model.<module>.token_adapter.trainable_tokens_delta with the token ids in
// adapter_config.json's trainable_token_indices.
type SpecialTokens struct {
	Offset, Count int
	Embed, Head   *model.Param
}

// Module names of the two tables.
const (
	embedModule = "transformer.wte"
	headModule  = "lm_head"
)

// AddSpecialTokens installs zero-initialised deltas on m when enabled (otherwise it returns
// an empty set that trains and saves nothing).
func AddSpecialTokens(m *model.Model, tok *tokenizer.Tokenizer, enabled bool) (*SpecialTokens, error) {
	s := &SpecialTokens{}
	if !enabled {
		return s, nil
	}
	h := m.Config.HiddenSize
	s.Offset, s.Count = tok.OrdinarySize(), tok.Size()-tok.OrdinarySize()
	if s.Offset+s.Count > m.Config.VocabSize {
		return nil, fmt.Errorf("lora: special tokens %d..%d lie beyond the model's %d embedding rows", s.Offset, s.Offset+s.Count-1, m.Config.VocabSize)
	}
	newDelta := func(name string) *model.Param {
		return &model.Param{Name: name, Value: tensor.New(tensor.WithShape(s.Count, h), tensor.WithBacking(make([]float32, s.Count*h))), Train: true}
	}
	s.Embed, s.Head = newDelta(embedModule+".token_adapter.trainable_tokens_delta"), newDelta(headModule+".token_adapter.trainable_tokens_delta")
	s.install(m)
	return s, nil
}

func (s *SpecialTokens) install(m *model.Model) {
	m.Embed = &embedRows{Base: m.Embed, Delta: s.Embed, Offset: s.Offset}
	m.Head = &headRows{Base: m.Head, Delta: s.Head, Offset: s.Offset, Vocab: m.Config.VocabSize}
}

// embedRows adds trainable rows to wte: x[i] += Delta[ids[i]-off] for ids in off..off+S-1.
type embedRows struct {
	Base   model.Embedder
	Delta  *model.Param
	Offset int
}

func (e *embedRows) Forward(g *model.Graph) (*G.Node, error) {
	x, err := e.Base.Forward(g)
	if err != nil {
		return nil, err
	}
	d, err := autograd.EmbeddingRows(g.Param(e.Delta), g.Step, g.Batch, g.Seq, e.Offset, g.Dtype) // [N, H]
	if err != nil {
		return nil, err
	}
	return G.Add(x, d)
}

// headRows adds trainable rows to lm_head: logits[:, off:off+S] += x Delta^T.
type headRows struct {
	Base   model.Projection
	Delta  *model.Param
	Offset int
	Vocab  int
}

// Unwrap implements model.Wrapper: lm_head itself.
func (h *headRows) Unwrap() model.Projection { return h.Base }

func (h *headRows) Forward(g *model.Graph, x *G.Node) (*G.Node, error) {
	y, err := h.Base.Forward(g, x)
	if err != nil {
		return nil, err
	}
	d, err := autograd.Linear(x, g.Param(h.Delta), nil, true, false) // [N, S]
	if err != nil {
		return nil, err
	}
	wide, err := autograd.PlaceColumns(d, h.Offset, h.Vocab)
	if err != nil {
		return nil, err
	}
	return G.Add(y, wide)
}

// Params are the two deltas (none when disabled).
func (s *SpecialTokens) Params() []*model.Param {
	if s.Embed == nil {
		return nil
	}
	return []*model.Param{s.Embed, s.Head}
}

// Tensors are the deltas under PEFT's key names.
func (s *SpecialTokens) Tensors() []checkpoints.Tensor {
	var ts []checkpoints.Tensor
	for _, p := range s.Params() {
		ts = append(ts, f32Tensor(keyPrefix+p.Name, p))
	}
	return ts
}

// indices are the token ids the deltas cover.
func (s *SpecialTokens) indices() []int {
	ids := make([]int, s.Count)
	for i := range ids {
		ids[i] = s.Offset + i
	}
	return ids
}

// SaveConfig adds trainable_token_indices to dir's adapter_config.json.
func (s *SpecialTokens) SaveConfig(dir string) error {
	if s.Embed == nil {
		return nil
	}
	path := filepath.Join(dir, ConfigFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("lora: %w", err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(b, &cfg); err != nil {
		return fmt.Errorf("lora: %s: %w", path, err)
	}
	cfg["trainable_token_indices"] = map[string][]int{"wte": s.indices(), "lm_head": s.indices()}
	return checkpoints.WriteJSON(path, cfg)
}

// loadSpecialTokens installs saved deltas found among an adapter's extra tensors.
func loadSpecialTokens(m *model.Model, extra map[string]checkpoints.Tensor, offset, count int) (*SpecialTokens, error) {
	e, okE := extra[keyPrefix+embedModule+".token_adapter.trainable_tokens_delta"]
	hd, okH := extra[keyPrefix+headModule+".token_adapter.trainable_tokens_delta"]
	if !okE && !okH {
		return nil, nil
	}
	if !okE || !okH {
		return nil, fmt.Errorf("lora: the adapter has trainable-token rows for only one of wte and lm_head")
	}
	s := &SpecialTokens{Offset: offset, Count: count}
	h := m.Config.HiddenSize
	for _, t := range []checkpoints.Tensor{e, hd} {
		if len(t.Shape) != 2 || t.Shape[1] != int64(h) || t.Shape[0] != int64(s.Count) {
			return nil, fmt.Errorf("lora: tensor %q has shape %v; trainable_token_indices and this model need [%d, %d]", t.Name, t.Shape, s.Count, h)
		}
	}
	if offset+s.Count > m.Config.VocabSize {
		return nil, fmt.Errorf("lora: the adapter's trainable-token rows are ids %d..%d, beyond this model's %d embedding rows: it was trained for another model", offset, offset+s.Count-1, m.Config.VocabSize)
	}
	ev, err := e.Float32()
	if err != nil {
		return nil, err
	}
	hv, err := hd.Float32()
	if err != nil {
		return nil, err
	}
	s.Embed = &model.Param{Name: embedModule + ".token_adapter.trainable_tokens_delta", Value: tensor.New(tensor.WithShape(s.Count, h), tensor.WithBacking(ev)), Train: true}
	s.Head = &model.Param{Name: headModule + ".token_adapter.trainable_tokens_delta", Value: tensor.New(tensor.WithShape(s.Count, h), tensor.WithBacking(hv)), Train: true}
	s.install(m)
	return s, nil
}

// Attach loads an adapter directory onto m for inference: LoRA layers and, when present,
// trainable special-token rows (whose first id is read from trainable_token_indices).
func Attach(dir string, m *model.Model) (*Adapter, error) {
	a, extra, err := Load(dir, m)
	if err != nil {
		return nil, err
	}
	if a.Modules, err = installModules(m, extra); err != nil {
		return nil, err
	}
	if len(extra) == 0 {
		return a, nil
	}
	offset, count, err := tokenOffset(dir)
	if err != nil {
		return nil, err
	}
	s, err := loadSpecialTokens(m, extra, offset, count)
	if err != nil {
		return nil, err
	}
	if s == nil {
		for name := range extra {
			return nil, fmt.Errorf("lora: %s: tensor %q is neither a LoRA weight, a saved wte/lm_head nor a special-token row", dir, name)
		}
	}
	return a, nil
}

// tokenOffset reads the first id and the count of the trainable-token rows from dir's
// adapter_config.json: consecutive ids, the same for wte and lm_head.
func tokenOffset(dir string) (offset, count int, err error) {
	path := filepath.Join(dir, ConfigFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, fmt.Errorf("lora: %w", err)
	}
	var cfg struct {
		Indices map[string][]int `json:"trainable_token_indices"`
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return 0, 0, fmt.Errorf("lora: %s: trainable_token_indices: %w (expected {\"wte\": [ids], \"lm_head\": [ids]})", path, err)
	}
	ids := cfg.Indices["wte"]
	if len(ids) == 0 {
		return 0, 0, fmt.Errorf("lora: %s has trainable-token rows but no trainable_token_indices", dir)
	}
	if head, ok := cfg.Indices["lm_head"]; ok && !slices.Equal(head, ids) {
		return 0, 0, fmt.Errorf("lora: %s: trainable_token_indices lists other ids for lm_head than for wte; the rows are trained alike in both", path)
	}
	for i, id := range ids {
		if id < 0 || id != ids[0]+i {
			return 0, 0, fmt.Errorf("lora: %s: trainable_token_indices must be consecutive ids from 0 up", dir)
		}
	}
	return ids[0], len(ids), nil
}
