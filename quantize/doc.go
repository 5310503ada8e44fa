// Package quantize turns float weights into GPTQ integer codes and back. In: a Linear's
// weight [out, in] and the Hessian of its calibration inputs. Out: codes, per-group scales
// and zeros, and g_idx, packed in AutoGPTQ's v1 "gptq" layout (qweight, qzeros, scales,
// g_idx) as Qwen-7B-Chat-Int4 stores them, plus the pure-Go dequantizer that every Int4
// kernel is checked against.
package quantize
