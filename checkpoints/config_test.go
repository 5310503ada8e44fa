package checkpoints

import (
	"encoding/json"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/qwen-tune/qwen-tune/internal/golden"
	"github.com/qwen-tune/qwen-tune/internal/tfile"
)

func TestRealConfigAndNameTable(t *testing.T) {
	cfg, err := ReadConfig(golden.Path(t, "qwen-7b/config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HiddenSize != 4096 || cfg.NumHiddenLayers != 32 || cfg.KVChannels != 128 || cfg.MLPWidth() != 11008 || cfg.SeqLength != 8192 || !cfg.UseDynamicNTK || !cfg.UseLogNAttn {
		t.Fatalf("config %+v", cfg)
	}
	ix, err := ReadIndex(golden.Path(t, "qwen-7b/model.safetensors.index.json"))
	if err != nil {
		t.Fatal(err)
	}
	specs := ModelTensors(cfg, nil)
	if len(specs) != 259 || len(ix.WeightMap) != 259 {
		t.Fatalf("%d names in the table, %d in the index; want 259", len(specs), len(ix.WeightMap))
	}
	var bytes, params int64
	for _, s := range specs {
		if _, ok := ix.WeightMap[s.Name]; !ok {
			t.Errorf("table name %q is not in the real index", s.Name)
		}
		params += s.NumElements()
		bytes += 2 * s.NumElements() // bf16
	}
	if params != 7_721_324_544 || cfg.ParamCount() != params {
		t.Errorf("parameters %d, want 7,721,324,544", params)
	}
	if bytes != ix.TotalSize() || bytes != 15_442_649_088 {
		t.Errorf("bf16 bytes %d, index total_size %d", bytes, ix.TotalSize())
	}
	// Unknown keys survive a write.
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	again, err := ParseConfig(b, "rewritten")
	if err != nil || again.HiddenSize != 4096 || len(again.Extra) != len(cfg.Extra) {
		t.Fatalf("rewritten config: %v %+v", err, again)
	}
	var a, b2 any
	if err := json.Unmarshal(again.Extra["auto_map"], &a); err != nil {
		t.Fatalf("auto_map after the rewrite: %v", err)
	}
	if err := json.Unmarshal(cfg.Extra["auto_map"], &b2); err != nil {
		t.Fatalf("auto_map: %v", err)
	}
	if a == nil || !reflect.DeepEqual(a, b2) {
		t.Fatalf("auto_map changed on rewrite: %v vs %v", a, b2)
	}
}

func TestGenerationConfigs(t *testing.T) {
	base, err := ReadGenerationConfig(golden.Path(t, "qwen-7b/generation_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if base.ChatFormat != "raw" || base.TopK != 0 || base.TopP != 0.8 || base.RepetitionPenalty != 1.0 || !slices.Equal(base.StopWordsIDs[0], []int{151643}) {
		t.Errorf("base generation config %+v", base)
	}
	chat, err := ReadGenerationConfig(golden.Path(t, "qwen-7b/chat_generation_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if want := ChatGenerationConfig(); chat.ChatFormat != "chatml" || chat.MaxWindowSize != 6144 || !reflect.DeepEqual(*chat, want) {
		t.Errorf("chat generation config %+v, want %+v", chat, want)
	}
}

func TestTinyGoldenCheckpoint(t *testing.T) {
	dir := filepath.Dir(golden.Path(t, "tiny-qwen/model.safetensors.index.json"))
	cfg, err := ReadConfig(filepath.Join(dir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	ck, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	if err := CheckTensors(cfg, nil, ck); err != nil {
		t.Fatal(err)
	}
	if len(ck.Files) != 2 || ck.TotalBytes() != ck.Index.TotalSize() {
		t.Fatalf("%d shards, %d bytes, index says %d", len(ck.Files), ck.TotalBytes(), ck.Index.TotalSize())
	}
	w, err := ck.Float32(LayerName(0, "attn.c_attn.weight"), 192, 64)
	if err != nil {
		t.Fatal(err)
	}
	nonzero := 0
	for _, v := range w {
		if v != 0 {
			nonzero++
		}
	}
	if nonzero < len(w)/2 {
		t.Fatalf("c_attn read as mostly zeros (%d of %d non-zero)", nonzero, len(w))
	}
	if _, err := ck.Float32(LayerName(0, "attn.c_attn.weight"), 64, 192); err == nil || !strings.Contains(err.Error(), "expected [64, 192]") {
		t.Fatalf("a wrong shape was accepted: %v", err)
	}
	r, err := Inspect(dir)
	if err != nil {
		t.Fatal(err)
	}
	if r.Kind != "model" || r.Parameters != cfg.ParamCount() || r.Tensors != 19 || r.DTypes["BF16"] != r.TotalBytes {
		t.Fatalf("inspect: %+v", r)
	}
}

func TestConfigRejections(t *testing.T) {
	good := `{"architectures":["QWenLMHeadModel"],"model_type":"qwen","vocab_size":512,"hidden_size":64,"num_hidden_layers":2,"num_attention_heads":4,"kv_channels":16,"intermediate_size":352}`
	if _, err := ParseConfig([]byte(good), "config.json"); err != nil {
		t.Fatal(err)
	}
	cases := []struct{ json, want string }{
		{`{"architectures":["QWenLMHeadModel"],"n_embd":4096,"n_layer":32,"n_head":32,"vocab_size":1}`, "old Qwen key names n_embd, n_layer, n_head"},
		{strings.Replace(good, `"QWenLMHeadModel"`, `"Qwen2ForCausalLM"`, 1), `expected ["QWenLMHeadModel"]`},
		{strings.Replace(good, `"hidden_size":64`, `"hidden_size":"64"`, 1), "hidden_size: expected a number, got a JSON string"},
		{strings.Replace(good, `"kv_channels":16`, `"kv_channels":15`, 1), "must equal hidden_size"},
		{strings.Replace(good, `"vocab_size":512,`, ``, 1), "vocab_size: missing"},
		{strings.Replace(good, `}`, `,"tie_word_embeddings":true}`, 1), "tie_word_embeddings"},
		{strings.Replace(good, `}`, `,"rotary_pct":0.5}`, 1), "rotary_pct"},
		{`[1]`, "not a JSON object"},
	}
	for _, c := range cases {
		_, err := ParseConfig([]byte(c.json), "config.json")
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "config.json") {
			t.Errorf("%s\n error %v, want %q", c.json, err, c.want)
		}
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "generation_config.json")
	tfile.Write(t, path, []byte(`{"chat_format":"chatml","top_p":"high"}`))
	if _, err := ReadGenerationConfig(path); err == nil || !strings.Contains(err.Error(), "top_p") {
		t.Errorf("generation config with a string top_p: %v", err)
	}
	tfile.Write(t, path, []byte(`{"chat_format":"markdown"}`))
	if _, err := ReadGenerationConfig(path); err == nil || !strings.Contains(err.Error(), "chat_format") {
		t.Errorf("unknown chat format: %v", err)
	}
}

func TestGPTQAndAdapterConfigs(t *testing.T) {
	g, err := ReadGPTQConfig(golden.Path(t, "qwen-7b-chat-int4/quantize_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if g.Bits != 4 || g.GroupSize != 128 || !g.Sym || g.DescAct || g.DampPercent != 0.01 || !g.TrueSequential {
		t.Fatalf("quantize_config %+v", g)
	}
	a, err := ReadAdapterConfig(golden.Path(t, "tiny-qwen/golden_lora_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if a.R != 4 || a.Scale() != 2 || !slices.Equal(a.Targets(), []string{"c_attn", "c_proj", "w1", "w2"}) {
		t.Fatalf("adapter config %+v", a)
	}
}

// TestGPTQTableOfQwen7BInt4: the GPTQ tensor table for Qwen-7B with Qwen-7B-Chat-Int4's
// quantize_config.json has AutoGPTQ's shapes.
func TestGPTQTableOfQwen7BInt4(t *testing.T) {
	cfg, err := ReadConfig(golden.Path(t, "qwen-7b/config.json"))
	if err != nil {
		t.Fatal(err)
	}
	g, err := ReadGPTQConfig(golden.Path(t, "qwen-7b-chat-int4/quantize_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	specs := ModelTensors(cfg, g)
	if len(specs) != 3+32*(2+5*5) {
		t.Fatalf("%d tensors", len(specs))
	}
	want := map[string][]int64{
		"transformer.h.0.attn.c_attn.qweight": {512, 12288},
		"transformer.h.0.attn.c_attn.qzeros":  {32, 1536},
		"transformer.h.0.attn.c_attn.scales":  {32, 12288},
		"transformer.h.0.attn.c_attn.g_idx":   {4096},
		"transformer.h.0.attn.c_attn.bias":    {12288},
		"transformer.h.31.mlp.c_proj.qweight": {1376, 4096},
		"transformer.h.31.mlp.c_proj.scales":  {86, 4096},
		"transformer.h.31.mlp.w2.qzeros":      {32, 1376},
	}
	found := 0
	for _, s := range specs {
		if w, ok := want[s.Name]; ok {
			found++
			if !slices.Equal(s.Shape, w) {
				t.Errorf("%s: %v, want %v", s.Name, s.Shape, w)
			}
		}
	}
	if found != len(want) {
		t.Errorf("found %d of %d names", found, len(want))
	}
}
