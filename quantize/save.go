package quantize

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"

	"github.com/qwen-tune/qwen-tune/autograd"
	"github.com/qwen-tune/qwen-tune/checkpoints"
)

// GPTQConfig is the quantize_config.json of options (and config.json's quantization_config).
func (o Options) GPTQConfig() *checkpoints.GPTQConfig {
	base := "model"
	return &checkpoints.GPTQConfig{
		Bits: o.Bits, GroupSize: o.GroupSize, DampPercent: o.Damp, DescAct: o.DescAct, StaticGroups: o.StaticGroups,
		Sym: o.Sym, TrueSequential: true, ModelFileBaseName: &base,
	}
}

// Save writes a GPTQ model directory as AutoGPTQ does: the quantized Linears
// (<module>.qweight, .qzeros, .scales, .g_idx, .bias), every other tensor of srcDir in fp16,
// quantize_config.json, config.json with quantization_config, and srcDir's other files
// (generation config, vocabulary). config.json is written last; outDir must be absent or
// empty (checkpoints.CheckOutDir).
func Save(outDir, srcDir string, layers []*autograd.Int4, o Options) error {
	if _, err := checkpoints.CheckOutDir(outDir, "--out"); err != nil {
		return err
	}
	cfg, err := checkpoints.ReadConfig(filepath.Join(srcDir, "config.json"))
	if err != nil {
		return err
	}
	if cfg.QuantizationConfig != nil {
		return fmt.Errorf("quantize: %s is already quantized", srcDir)
	}
	ck, err := checkpoints.OpenDir(srcDir)
	if err != nil {
		return err
	}
	defer ck.Close()
	quantized := map[string]bool{}
	var ts []checkpoints.Tensor
	for _, p := range layers {
		quantized[p.Name+".weight"], quantized[p.Name+".bias"] = true, true
		scales := make([]uint16, len(p.Scales))
		for i, v := range p.Scales {
			scales[i] = checkpoints.F32ToF16(v)
		}
		bias := make([]uint16, p.N) // zero where the float layer had none, as AutoGPTQ stores it
		for i, v := range p.Bias {
			bias[i] = checkpoints.F32ToF16(v)
		}
		per := 32 / p.Bits
		ts = append(ts,
			i32Tensor(p.Name+".qweight", p.QWeight, p.K/per, p.N),
			i32Tensor(p.Name+".qzeros", p.QZeros, p.G, p.N/per),
			f16Tensor(p.Name+".scales", scales, p.G, p.N),
			i32Tensor(p.Name+".g_idx", p.GIdx, p.K),
			f16Tensor(p.Name+".bias", bias, p.N))
	}
	for _, name := range ck.Names() {
		if quantized[name] {
			continue
		}
		t, err := ck.Tensor(name)
		if err != nil {
			return err
		}
		ts = append(ts, toF16(t))
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}
	meta := map[string]string{"qwen_tune.format": "gptq", "qwen_tune.bits": fmt.Sprint(o.Bits), "qwen_tune.group_size": fmt.Sprint(o.GroupSize)}
	if _, err := checkpoints.WriteSharded(outDir, "model", ts, meta, checkpoints.DefaultShardBytes); err != nil {
		return err
	}
	gc := o.GPTQConfig()
	if err := checkpoints.WriteJSON(filepath.Join(outDir, "quantize_config.json"), gc); err != nil {
		return err
	}
	side, err := checkpoints.SideFiles(srcDir)
	if err != nil {
		return err
	}
	for _, n := range side {
		if n == "quantize_config.json" {
			continue
		}
		if err := checkpoints.CopyFile(filepath.Join(srcDir, n), filepath.Join(outDir, n)); err != nil {
			return err
		}
	}
	withQ := *gc
	withQ.QuantMethod = "gptq"
	cfg.QuantizationConfig = &withQ
	cfg.Extra["torch_dtype"] = []byte(`"float16"`)
	return checkpoints.WriteJSON(filepath.Join(outDir, "config.json"), cfg)
}

func i32Tensor(name string, v []int32, shape ...int) checkpoints.Tensor {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], uint32(x))
	}
	return checkpoints.Tensor{Name: name, DType: checkpoints.I32, Shape: shape64(shape), Data: b}
}

func f16Tensor(name string, v []uint16, shape ...int) checkpoints.Tensor {
	b := make([]byte, 2*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint16(b[2*i:], x)
	}
	return checkpoints.Tensor{Name: name, DType: checkpoints.F16, Shape: shape64(shape), Data: b}
}

func shape64(s []int) []int64 {
	out := make([]int64, len(s))
	for i, d := range s {
		out[i] = int64(d)
	}
	return out
}

// toF16 streams a floating-point tensor as fp16 (AutoGPTQ keeps the unquantized tensors of
// Qwen-7B-Chat-Int4 in fp16).
func toF16(t checkpoints.Tensor) checkpoints.Tensor {
	if t.DType == checkpoints.F16 {
		return t
	}
	src, dt := t.Data, t.DType
	size := dt.Size()
	out := checkpoints.Tensor{Name: t.Name, DType: checkpoints.F16, Shape: t.Shape}
	out.Gen = func(dst []byte, off int64) {
		first := int(off) / 2
		for i := 0; i < len(dst)/2; i++ {
			var v float32
			e := (first + i) * size
			switch dt {
			case checkpoints.BF16:
				v = checkpoints.BF16ToF32(binary.LittleEndian.Uint16(src[e:]))
			default:
				v = math32(binary.LittleEndian.Uint32(src[e:]))
			}
			binary.LittleEndian.PutUint16(dst[2*i:], checkpoints.F32ToF16(v))
		}
	}
	return out
}

func math32(b uint32) float32 { return math.Float32frombits(b) }
