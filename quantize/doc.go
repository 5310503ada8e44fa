// Package quantize turns a model's float weights into GPTQ integer codes. In: a model and
// calibration samples; Calibrate captures the inputs of every block Linear, accumulates their
// Hessian and runs GPTQ (or round-to-nearest, the baseline it is compared with). Out: each
// Linear's codes, per-group scales and zeros and g_idx packed in AutoGPTQ's v1 "gptq" layout
// (qweight, qzeros, scales, g_idx) as Qwen-7B-Chat-Int4 stores them, a report of each
// layer's output error, and, through Save, a GPTQ model directory. autograd.Int4.Dequantize is the
// reference unpacking the layout is tested with; a packed model runs through
// autograd.Int4Linear, on the CPU or through the GPU executor (autograd/cuda/int4.go).
// CalibrateDevice (builds with -tags qtcuda or cudaemu) calibrates on a GPU: the forward
// through the executor with the hidden states kept on the device, the Hessians summed there,
// and GPTQDevice, GPTQ's solve in the CPU's order of operations.
// WriteTiny writes a tiny random GPTQ model for the tests and the GPU self-test.
package quantize
