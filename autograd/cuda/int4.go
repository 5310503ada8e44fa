//go:build qtcuda || cudaemu

package cuda

// GPTQ layers on the device (kernels/int4.cu): the packed codes and zeros uploaded as they
// are stored, scales in float32, g_idx only for act-order layers (a layer whose g_idx is
// k / group is run as plain groups and never reads it), the bias in float32. Decoding runs
// gemv_int4 over the packed words; a prefill dequantizes W^T to bf16 and runs the cuBLAS GEMM
// of dense weights.

import (
	"fmt"
	"unsafe"

	"github.com/qwen-tune/qwen-tune/autograd"
)

// Int4Weights is an Int4 on the device.
type Int4Weights struct {
	Name          string
	Bits, K, N, G int
	// Group > 0: plain groups, input k in group k / Group (GPTQ's group size; K for one group);
	// 0: act-order, the groups read from GIdx.
	Group                         int
	QWeight, QZeros, Scales, GIdx *Buffer
	Bias                          *Buffer // float32 [N]; nil when the layer has none or it is all zero
}

// Bytes is the device memory the layer holds.
func (w *Int4Weights) Bytes() int64 {
	var n int64
	for _, b := range w.buffers() {
		n += b.Bytes
	}
	return n
}

func (w *Int4Weights) buffers() []*Buffer {
	var bs []*Buffer
	for _, b := range []*Buffer{w.QWeight, w.QZeros, w.Scales, w.GIdx, w.Bias} {
		if b != nil {
			bs = append(bs, b)
		}
	}
	return bs
}

// Free releases the layer's buffers.
func (w *Int4Weights) Free(d *Device) {
	for _, b := range w.buffers() {
		d.Free(b)
	}
	w.QWeight, w.QZeros, w.Scales, w.GIdx, w.Bias = nil, nil, nil, nil, nil
}

// UploadInt4 copies a GPTQ layer to the device (after checking it as Int4.Check does).
func (d *Device) UploadInt4(w *autograd.Int4) (*Int4Weights, error) {
	if err := w.Check(); err != nil {
		return nil, err
	}
	if int64(w.K)*int64(w.N) > 1<<31-1 {
		return nil, fmt.Errorf("cuda: %s: %d x %d weights are more than the Int4 kernels index (2^31 - 1)", w.Name, w.N, w.K)
	}
	dw := &Int4Weights{Name: w.Name, Bits: w.Bits, K: w.K, N: w.N, G: w.G, Group: w.PlainGroup()}
	up := func(dst **Buffer, data unsafe.Pointer, bytes int64, what string) error {
		b, err := d.Alloc(bytes, w.Name+" "+what)
		if err != nil {
			return err
		}
		*dst = b
		return cudaErr("cuMemcpyHtoD("+w.Name+" "+what+")", d.drv.memcpyHtoD(b.Ptr, data, bytes))
	}
	err := up(&dw.QWeight, unsafe.Pointer(&w.QWeight[0]), int64(len(w.QWeight))*4, "qweight")
	if err == nil {
		err = up(&dw.QZeros, unsafe.Pointer(&w.QZeros[0]), int64(len(w.QZeros))*4, "qzeros")
	}
	if err == nil {
		err = up(&dw.Scales, unsafe.Pointer(&w.Scales[0]), int64(len(w.Scales))*4, "scales")
	}
	if err == nil && dw.Group == 0 {
		err = up(&dw.GIdx, unsafe.Pointer(&w.GIdx[0]), int64(len(w.GIdx))*4, "g_idx")
	}
	if err == nil && w.HasBias() {
		err = up(&dw.Bias, unsafe.Pointer(&w.Bias[0]), int64(len(w.Bias))*4, "bias")
	}
	if err != nil {
		dw.Free(d)
		return nil, err
	}
	return dw, nil
}

// int4Weights uploads w once per Device (ReleaseWeights frees it).
func (d *Device) int4Weights(w *autograd.Int4) (*Int4Weights, error) {
	if dw := d.int4[w]; dw != nil {
		return dw, nil
	}
	dw, err := d.UploadInt4(w)
	if err != nil {
		return nil, err
	}
	d.int4[w] = dw
	return dw, nil
}

// check is the preconditions the Int4 kernels share.
func (w *Int4Weights) check(op string) error {
	per := 32 / max(w.Bits, 1)
	return need((w.Bits == 2 || w.Bits == 4 || w.Bits == 8) && w.K%per == 0 && w.N%per == 0 && w.K > 0 && w.N > 0 &&
		(w.Group > 0 && w.K%w.Group == 0 || w.Group == 0 && w.GIdx != nil) && w.QWeight != nil && w.QZeros != nil && w.Scales != nil &&
		w.QWeight.Bytes >= int64(w.K/per*w.N)*4 && w.Scales.Bytes >= int64(w.G*w.N)*4 && w.QZeros.Bytes >= int64(w.G*w.N/per)*4 &&
		(w.GIdx == nil || w.GIdx.Bytes >= int64(w.K)*4) && (w.Bias == nil || w.Bias.Bytes >= int64(w.N)*4),
		"%s %s: %d-bit codes (2, 4 or 8) of [%d, %d] (both multiples of %d), %d groups (plain groups of %d inputs dividing K, or act-order with g_idx), buffers that fit",
		op, w.Name, w.Bits, w.N, w.K, per, w.G, w.Group)
}

// gemvInt4Slices is how many slices of the packed rows a gemv_int4 block sums (32 columns a
// block, 32 threads a slice): enough blocks x slices for about 4096 warps in all (Qwen-7B's
// layers: 32 slices for N 4096, 16 for N 11008 and 12288), never more slices than packed rows.
// A guess to be measured on a GPU.
func gemvInt4Slices(n, words int) int {
	tiles := (n + 31) / 32
	s := 4
	for s < 32 && tiles*s < 4096 {
		s *= 2
	}
	return max(1, min(s, words))
}

// GemvInt4 is gemv_int4: y [N] = x [K] W (+ the layer's bias), x 16-byte aligned.
func (d *Device) GemvInt4(y, x *Buffer, w *Int4Weights) error {
	if err := w.check("GemvInt4"); err != nil {
		return err
	}
	if err := need(x.Bytes >= int64(w.K)*4 && x.Ptr%16 == 0 && y.Bytes >= int64(w.N)*4, "GemvInt4 %s: x [%d] (16-byte aligned) and y [%d] must fit", w.Name, w.K, w.N); err != nil {
		return err
	}
	slices := gemvInt4Slices(w.N, w.K/(32/w.Bits))
	return d.launch("gemv_int4", (w.N+31)/32, 32*slices, 0, y, x, w.QWeight, w.QZeros, w.Scales, w.GIdx, w.Bias, w.K, w.N, w.Bits, w.Group)
}

// DequantInt4BF16 is dequant_int4_bf16: out [N, K] bf16 = W^T (16-byte aligned).
func (d *Device) DequantInt4BF16(out *Buffer, w *Int4Weights) error {
	if err := w.check("DequantInt4BF16"); err != nil {
		return err
	}
	if err := need(out.Bytes >= int64(w.N)*int64(w.K)*2 && out.Ptr%16 == 0, "DequantInt4BF16 %s: output [%d, %d] bf16 (16-byte aligned) must fit", w.Name, w.N, w.K); err != nil {
		return err
	}
	return d.launch("dequant_int4_bf16", grid(int64(w.N)*int64((w.K+15)/16)), 256, 0, out, w.QWeight, w.QZeros, w.Scales, w.GIdx, w.K, w.N, w.Bits, w.Group)
}

// BiasF32 is bias_f32: y [rows, cols] += bias [cols] (float32).
func (d *Device) BiasF32(y, bias *Buffer, rows, cols int) error {
	if err := need(y.Bytes >= int64(rows)*int64(cols)*4 && bias.Bytes >= int64(cols)*4, "BiasF32: [%d, %d]", rows, cols); err != nil {
		return err
	}
	return d.launch("bias_f32", grid(int64(rows)*int64(cols)), 256, 0, y, bias, rows, cols)
}
