package lora

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/gonum"

	"github.com/qwen-tune/qwen-tune/checkpoints"
	"github.com/qwen-tune/qwen-tune/model"
)

// Merge writes modelDir's weights with the adapter folded in, W' = W + (alpha/r) B A (and the
// trained special-token rows added to wte and lm_head), computed in float32 and stored in
// each tensor's original dtype, in the original file layout: the same shards with the same
// tensors, and the index; the other files of modelDir (config, generation config,
// vocabulary) are copied. Tensors are produced one tile at a time, so a 7B model merges in
// little memory. outDir must be absent or empty (checkpoints.CheckOutDir).
func Merge(modelDir, adapterDir, outDir string) error {
	if _, err := checkpoints.CheckOutDir(outDir, "--out"); err != nil {
		return err
	}
	m, err := model.Load(modelDir, model.LoadOptions{})
	if err != nil {
		return err
	}
	defer m.Close()
	if g := m.GPTQ; g != nil {
		return fmt.Errorf("lora: %s is a GPTQ %d-bit model: an adapter cannot be merged into packed weights without rounding most of it away. Merge it into the floating-point (bf16) model instead, then quantize the result again (qwen-tune merge --model BF16_DIR --adapter %s --out MERGED; qwen-tune quantize --model MERGED ...), or apply it unmerged with --adapter", modelDir, g.Bits, adapterDir)
	}
	a, err := Attach(adapterDir, m)
	if err != nil {
		return err
	}
	deltas := map[string]func(r0, r1 int, dst []float32){}
	for _, l := range a.Layers {
		deltas[l.Module+".weight"] = loraDelta(l)
	}
	replaced := map[string]*model.Param{}
	for _, p := range a.Modules {
		replaced[p.Name] = p
	}
	if rows, ok := m.Head.(*headRows); ok {
		deltas[checkpoints.LMHead] = rowDelta(rows.Delta, rows.Offset)
	}
	if rows, ok := m.Embed.(*embedRows); ok {
		deltas[checkpoints.Embedding] = rowDelta(rows.Delta, rows.Offset)
	}
	ck, err := checkpoints.OpenDir(modelDir)
	if err != nil {
		return err
	}
	defer ck.Close()
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}
	shards := map[string][]string{} // file name -> tensor names
	for _, name := range ck.Names() {
		_, f, _ := ck.Info(name)
		base := filepath.Base(f.Path)
		shards[base] = append(shards[base], name)
	}
	meta := map[string]string{"qwen_tune.merged_adapter": filepath.Base(filepath.Clean(adapterDir))}
	for file, names := range shards {
		var ts []checkpoints.Tensor
		for _, name := range names {
			t, err := ck.Tensor(name)
			if err != nil {
				return err
			}
			if d, ok := deltas[name]; ok {
				t = mergedTensor(t, d)
			}
			if p, ok := replaced[name]; ok {
				t = replacedTensor(t, p.Value.Data().([]float32))
			}
			ts = append(ts, t)
		}
		if err := checkpoints.WriteFile(filepath.Join(outDir, file), ts, meta); err != nil {
			return err
		}
	}
	// The index, generation config, vocabulary and the rest as they were; config.json last.
	side, err := checkpoints.SideFiles(modelDir)
	if err != nil {
		return err
	}
	if ck.Index != nil {
		side = append(side, "model.safetensors.index.json")
	}
	for _, name := range append(side, "config.json") {
		if err := checkpoints.CopyFile(filepath.Join(modelDir, name), filepath.Join(outDir, name)); err != nil {
			return err
		}
	}
	return nil
}

// loraDelta computes rows r0..r1 of scale B A into dst.
func loraDelta(l *Layer) func(r0, r1 int, dst []float32) {
	a, b := l.A.Value.Data().([]float32), l.B.Value.Data().([]float32)
	r, in := l.A.Value.Shape()[0], l.A.Value.Shape()[1]
	return func(r0, r1 int, dst []float32) {
		gonum.Implementation{}.Sgemm(blas.NoTrans, blas.NoTrans, r1-r0, in, r, float32(l.Scale), b[r0*r:], r, a, in, 0, dst, in)
	}
}

// rowDelta adds a [S, H] table to rows offset..offset+S-1.
func rowDelta(p *model.Param, offset int) func(r0, r1 int, dst []float32) {
	d := p.Value.Data().([]float32)
	s, h := p.Value.Shape()[0], p.Value.Shape()[1]
	return func(r0, r1 int, dst []float32) {
		clear(dst)
		for r := max(r0, offset); r < min(r1, offset+s); r++ {
			copy(dst[(r-r0)*h:(r-r0+1)*h], d[(r-offset)*h:(r-offset+1)*h])
		}
	}
}

// replacedTensor streams a full trained weight in t's dtype.
func replacedTensor(t checkpoints.Tensor, v []float32) checkpoints.Tensor {
	size := t.DType.Size()
	out := checkpoints.Tensor{Name: t.Name, DType: t.DType, Shape: t.Shape}
	out.Gen = func(dst []byte, off int64) {
		first := int(off) / size
		for i := 0; i < len(dst)/size; i++ {
			encode(t.DType, dst[i*size:], v[first+i])
		}
	}
	return out
}

// mergedTensor streams t + delta in t's dtype.
func mergedTensor(t checkpoints.Tensor, delta func(r0, r1 int, dst []float32)) checkpoints.Tensor {
	cols := int(t.Shape[len(t.Shape)-1])
	size := t.DType.Size()
	src := t.Data
	out := checkpoints.Tensor{Name: t.Name, DType: t.DType, Shape: t.Shape}
	out.Gen = func(dst []byte, off int64) {
		first := int(off) / size
		n := len(dst) / size
		r0, r1 := first/cols, (first+n+cols-1)/cols
		buf := make([]float32, (r1-r0)*cols)
		delta(r0, r1, buf)
		for i := 0; i < n; i++ {
			e := first + i
			v := decode(t.DType, src[e*size:]) + buf[e-r0*cols]
			encode(t.DType, dst[i*size:], v)
		}
	}
	return out
}

func decode(dt checkpoints.DType, b []byte) float32 {
	switch dt {
	case checkpoints.BF16:
		return checkpoints.BF16ToF32(binary.LittleEndian.Uint16(b))
	case checkpoints.F16:
		return checkpoints.F16ToF32(binary.LittleEndian.Uint16(b))
	}
	return math.Float32frombits(binary.LittleEndian.Uint32(b))
}

func encode(dt checkpoints.DType, b []byte, v float32) {
	switch dt {
	case checkpoints.BF16:
		binary.LittleEndian.PutUint16(b, checkpoints.F32ToBF16(v))
	case checkpoints.F16:
		binary.LittleEndian.PutUint16(b, checkpoints.F32ToF16(v))
	default:
		binary.LittleEndian.PutUint32(b, math.Float32bits(v))
	}
}
