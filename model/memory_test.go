package model

import (
	"testing"

	"github.com/qwen-tune/qwen-tune/checkpoints"
	"github.com/qwen-tune/qwen-tune/internal/golden"
)

// TestWeightBytesOfGPTQ: Qwen-7B-Chat-Int4 (4 bits, group size 128) holds its packed block
// linears and its fp16 tables widened to float32, not two bytes a parameter.
func TestWeightBytesOfGPTQ(t *testing.T) {
	cfg, err := checkpoints.ReadConfig(golden.Path(t, "qwen-7b/config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if got := WeightBytes(cfg); got != 15_442_649_088 {
		t.Errorf("bf16 Qwen-7B: %d bytes, want 15,442,649,088", got)
	}
	if cfg.QuantizationConfig, err = checkpoints.ReadGPTQConfig(golden.Path(t, "qwen-7b-chat-int4/quantize_config.json")); err != nil {
		t.Fatal(err)
	}
	// Worked out by hand: wte and lm_head 2 x 151936 x 4096 x 4 = 4,978,638,848; 65 norms of
	// 4096 floats = 1,064,960; per layer, over the five (in, out) = (4096, 12288), (4096, 4096),
	// (4096, 11008) twice, (11008, 4096): codes in*out/2, zeros (in/128)(out/8) x 4, scales
	// (in/128) x out x 4, g_idx 4 in, bias 4 out = 108,581,888, times 32 layers.
	const want = 4_978_638_848 + 1_064_960 + 32*108_581_888
	if got := WeightBytes(cfg); got != want {
		t.Errorf("Qwen-7B-Chat-Int4: %d bytes, want %d", got, want)
	}
}
