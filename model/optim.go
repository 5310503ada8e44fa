package model

import "github.com/qwen-tune/qwen-tune/optim"

// OptimExecutor is a GradExecutor that also keeps a run's trained parameters on its device
// with their optimizer: values, AdamW moments and the step's gradient sums stay there from
// step to step, and only the loss and the gradient norm come back to the host.
type OptimExecutor interface {
	GradExecutor
	// NewDeviceParams keeps params (float32, trained) on the device. Programs CompileGrad
	// makes read their device values from then on, not the host's.
	NewDeviceParams(params []*Param) (DeviceParams, error)
}

// DeviceParams are trained parameters on an executor's device (OptimExecutor). Per step:
// Accumulate before each micro-batch's program runs, Clip, then Update; GoBack undoes the
// last Update. The host's values and moments are stale until Download.
type DeviceParams interface {
	// Accumulate makes p's next run (a program CompileGrad made for the same parameters, in
	// their order) add its gradients times tokens to the step's sums; first starts them at
	// 0. Programs compiled after NewDeviceParams write them there from their GEMMs.
	Accumulate(p GradProgram, tokens int, first bool) error
	// Clip divides the sums by the step's tokens and clips them to the global norm maxNorm
	// as optim.ClipGradNorm; it returns the norm before clipping.
	Clip(tokens int, maxNorm float64) (float64, error)
	// Update is o.Update (o's hyperparameters and step count; its host moments are not
	// used) at learning rate lr with the clipped gradients, the state before it kept.
	Update(o *optim.AdamW, lr float64) error
	// GoBack restores the values, moments and o.Step from before the last Update, once.
	GoBack(o *optim.AdamW) error
	// Upload puts host values and moments (one slice per parameter) on the device, and
	// Download brings the device's back.
	Upload(values, m, v [][]float32) error
	Download(values, m, v [][]float32) error
	// Bytes is the device memory held besides the weights the programs read.
	Bytes() int64
	// Memory is the memory held, by kind (the bf16 weights the programs read included).
	Memory() []MemoryPart
	Close() error
}

// MemoryPart is one kind of memory trained parameters hold (DeviceParams.Memory).
type MemoryPart struct {
	What  string `json:"what"`
	Bytes int64  `json:"bytes"`
	Host  bool   `json:"host,omitempty"` // page-locked host memory, not the device's
}
