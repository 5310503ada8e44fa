package checkpoints

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/qwen-tune/qwen-tune/internal/tfile"
)

func writeTinyConfig(t *testing.T, dir, extra string) {
	t.Helper()
	js := `{"architectures":["QWenLMHeadModel"],"model_type":"qwen","vocab_size":16,"hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2,"kv_channels":4,"intermediate_size":16` + extra + `}`
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(js), 0o644); err != nil {
		t.Fatal(err)
	}
}

func zeros(name string, dt DType, shape ...int64) Tensor {
	t := Tensor{Name: name, DType: dt, Shape: shape}
	t.Data = make([]byte, t.NumElements()*int64(dt.Size()))
	return t
}

func TestInspectAdapter(t *testing.T) {
	dir := t.TempDir()
	tfile.Write(t, filepath.Join(dir, "adapter_config.json"), []byte(`{"peft_type":"LORA","task_type":"CAUSAL_LM","r":4,"lora_alpha":16,"lora_dropout":0.05,"target_modules":["c_attn","w2"],"bias":"none","base_model_name_or_path":"Qwen/Qwen-7B-Chat","modules_to_save":null}`))
	ts := []Tensor{
		zeros("base_model.model.transformer.h.0.attn.c_attn.lora_A.weight", F32, 4, 8),
		zeros("base_model.model.transformer.h.0.attn.c_attn.lora_B.weight", F32, 24, 4),
		zeros("base_model.model.transformer.h.0.mlp.w2.lora_A.weight", F32, 4, 8),
		zeros("base_model.model.transformer.h.0.mlp.w2.lora_B.weight", F32, 8, 4),
	}
	if err := WriteFile(filepath.Join(dir, "adapter_model.safetensors"), ts, nil); err != nil {
		t.Fatal(err)
	}
	r, err := Inspect(dir)
	if err != nil {
		t.Fatal(err)
	}
	if r.Kind != "lora" || r.LoRA.R != 4 || r.LoRA.Scale != 4 || r.LoRA.AdaptedLayers != 2 || r.Parameters != 32+96+32+32 || r.LoRA.BaseModel != "Qwen/Qwen-7B-Chat" {
		t.Fatalf("report %+v %+v", r, r.LoRA)
	}
	tfile.Write(t, filepath.Join(dir, "adapter_config.json"), []byte(`{"peft_type":"PREFIX_TUNING","r":4}`))
	if _, err := Inspect(dir); err == nil || !strings.Contains(err.Error(), `expected "LORA"`) {
		t.Fatalf("prefix tuning adapter: %v", err)
	}
}

func TestInspectGPTQ(t *testing.T) {
	dir := t.TempDir()
	writeTinyConfig(t, dir, `,"quantization_config":{"bits":4,"group_size":128,"damp_percent":0.01,"desc_act":false,"sym":true,"true_sequential":true,"quant_method":"gptq"}`)
	ts := []Tensor{
		zeros("transformer.h.0.attn.c_attn.qweight", I32, 1, 24),
		zeros("transformer.h.0.attn.c_attn.qzeros", I32, 1, 3),
		zeros("transformer.h.0.attn.c_attn.scales", F16, 1, 24),
		zeros("transformer.h.0.attn.c_attn.g_idx", I32, 8),
		zeros("transformer.wte.weight", F16, 16, 8),
	}
	if _, err := WriteSharded(dir, "model", ts, nil, 0); err != nil {
		t.Fatal(err)
	}
	r, err := Inspect(dir)
	if err != nil {
		t.Fatal(err)
	}
	if r.Kind != "gptq" || r.GPTQ.Bits != 4 || r.QuantLinears != 1 || r.DTypes["I32"] == 0 {
		t.Fatalf("report %+v", r)
	}
	writeTinyConfig(t, dir, `,"quantization_config":{"bits":5,"group_size":128,"damp_percent":0.01}`)
	if _, err := Inspect(dir); err == nil || !strings.Contains(err.Error(), "bits must be 2, 3, 4 or 8") {
		t.Fatalf("5-bit config: %v", err)
	}
}

func TestModelTensorProblemsAreNamed(t *testing.T) {
	dir := t.TempDir()
	writeTinyConfig(t, dir, "")
	cfg, err := ReadConfig(filepath.Join(dir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var ts []Tensor
	for _, s := range ModelTensors(cfg, nil) {
		ts = append(ts, zeros(s.Name, BF16, s.Shape...))
	}
	check := func(ts []Tensor, want string) {
		t.Helper()
		tfile.Remove(t, filepath.Join(dir, "model.safetensors"))
		if _, err := WriteSharded(dir, "model", ts, nil, 0); err != nil {
			t.Fatal(err)
		}
		_, err := Inspect(dir)
		if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Errorf("error %v, want %q", err, want)
		}
	}
	check(ts, "")
	check(ts[1:], `"transformer.wte.weight" is missing`)
	bad := append([]Tensor(nil), ts...)
	bad[1] = zeros(bad[1].Name, BF16, 9)
	check(bad, `"transformer.h.0.ln_1.weight" has shape [9] but the config implies [8]`)
	check(append(append([]Tensor(nil), ts...), zeros("transformer.h.1.ln_1.weight", BF16, 8)), `unexpected tensor "transformer.h.1.ln_1.weight"`)
}

// Opening a checkpoint maps it; reading a tensor must not copy it into the Go heap.
func TestOpenDoesNotCopyIntoHeap(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no memory map here")
	}
	dir := t.TempDir()
	const n = 16 << 20 // 64 MiB of float32
	big := Tensor{Name: "big", DType: F32, Shape: []int64{n}, Data: make([]byte, 4*n)}
	path := filepath.Join(dir, "big.safetensors")
	if err := WriteFile(path, []Tensor{big}, nil); err != nil {
		t.Fatal(err)
	}
	big.Data = nil
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tt, err := f.Tensor("big")
	if err != nil || len(tt.Data) != 4*n {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if grew := int64(after.TotalAlloc - before.TotalAlloc); grew > 1<<20 {
		t.Fatalf("opening and reading a 64 MiB tensor allocated %d bytes on the heap", grew)
	}
}

// TestInspectTrainingCheckpoint: every file of a training checkpoint is validated: the state,
// each trained parameter with both AdamW moments of its shape, nothing else in the directory.
func TestInspectTrainingCheckpoint(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "adapter_config.json"), []byte(`{"peft_type":"LORA","r":4,"lora_alpha":8,"target_modules":["w2"],"trainable_token_indices":[5,6,7]}`), 0o644)
	a := zeros("base_model.model.transformer.h.0.mlp.w2.lora_A.weight", F32, 4, 8)
	if err := WriteFile(filepath.Join(dir, "adapter_model.safetensors"), []Tensor{a}, nil); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, TrainerStateFile), []byte(`{"format":"qwen-tune-lora-trainer","version":1,"step":3,"total_steps":10,"adam_step":3}`), 0o644)
	p := zeros("h.0.w2.lora_A", F32, 4, 8)
	WriteFile(filepath.Join(dir, TrainerParamsFile), []Tensor{p}, nil)
	m, v := zeros("m.h.0.w2.lora_A", F32, 4, 8), zeros("v.h.0.w2.lora_A", F32, 4, 8)
	WriteFile(filepath.Join(dir, OptimizerFile), []Tensor{m, v}, nil)
	r, err := Inspect(dir)
	if err != nil || r.Training == nil || r.Training.Step != 3 || r.Training.Parameters != 32 || len(r.LoRA.TrainableTokens["embedding"]) != 3 {
		t.Fatalf("report %+v %v", r, err)
	}
	for _, c := range []struct {
		opt  []Tensor
		want string
	}{
		{[]Tensor{m}, `lacks "v.h.0.w2.lora_A"`},
		{[]Tensor{m, zeros("v.h.0.w2.lora_A", F32, 8, 4)}, `"v.h.0.w2.lora_A" is F32 [8, 4], expected F32 [4, 8]`},
		{[]Tensor{m, v, zeros("m.other", F32, 1)}, `"m.other", which is no moment`},
	} {
		WriteFile(filepath.Join(dir, OptimizerFile), c.opt, nil)
		if _, err := Inspect(dir); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: want %q", err, c.want)
		}
	}
}
