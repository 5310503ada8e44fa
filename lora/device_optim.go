package lora

import (
	"context"
	"errors"
	"fmt"

	"github.com/qwen-tune/qwen-tune/model"
)

// deviceState is the trainer's side of parameters kept on a device (model.DeviceParams):
// which copy, host or device, is newer.
type deviceState struct {
	params model.DeviceParams // nil until the first step on the device
	// upload: the host's values changed (a checkpoint was loaded) and the device must take
	// them before the next step; download: the device's values and moments are newer than
	// t.Params and t.Opt.
	upload, download bool
	// kept: the device holds the state before its last update (GoBack can undo it)
	kept bool
	// rewrite: an update failed after AdamW ran, and the programs' bf16 weights may not be
	// the values': before the next step the values come to the host and go back up (which
	// writes the weights again)
	rewrite bool
}

// hostChanged says that t.Params and t.Opt now hold the state to train from.
func (s *deviceState) hostChanged() {
	s.upload, s.download, s.kept, s.rewrite = true, false, false, false
}

// values are the trained parameters' host slices.
func (t *Trainer) values() [][]float32 {
	values := make([][]float32, len(t.Params))
	for i, p := range t.Params {
		values[i] = p.Value.Data().([]float32)
	}
	return values
}

// deviceParams keeps the trained parameters on ox's device (the first time) and uploads the
// host's state when it is newer.
func (t *Trainer) deviceParams(ox model.OptimExecutor) error {
	s := &t.dev
	if s.params == nil {
		p, err := ox.NewDeviceParams(t.Params)
		if err != nil {
			return fmt.Errorf("lora: %s: keeping the trained parameters on the device: %w", t.Model.Exec.Name(), err)
		}
		s.params, s.upload = p, true
	}
	if s.rewrite {
		if err := t.Sync(); err != nil {
			return err
		}
		s.upload, s.rewrite = true, false
	}
	if s.upload {
		if err := s.params.Upload(t.values(), t.Opt.M, t.Opt.V); err != nil {
			return err
		}
		s.upload, s.download, s.kept = false, false, false
	}
	return nil
}

// deviceStep is TrainStep with the optimizer on the device: each micro-batch's program runs
// on the trained parameters' device values and adds its gradients, times its trained tokens,
// to the step's sums there (its GEMMs write them); the mean is clipped to the global norm and AdamW updates the
// values and moments there, at the host schedule's learning rate. Only the losses and the
// norm come to the host. A non-finite loss or norm goes back to before the last update on
// the device, as on the host.
func (t *Trainer) deviceStep(ctx context.Context, ox model.OptimExecutor) (StepResult, error) {
	res := StepResult{Step: t.Step, LR: t.Sched.LR(t.Step)}
	if err := t.deviceParams(ox); err != nil {
		return res, err
	}
	dev := t.dev.params
	err := t.runMicroBatches(ctx, &res, func(k int, g *GradGraph, b *Batch, n int) (float64, error) {
		if g.device == nil {
			return 0, fmt.Errorf("lora: %s: the training graph of %d x %d tokens does not run on the device", t.Model.Exec.Name(), b.Batch, b.Seq)
		}
		g.set(b, t.dropoutSeed(t.Step, k))
		if err := dev.Accumulate(g.device, n, res.Tokens == 0); err != nil { // the step's first micro-batch starts the sums
			return 0, err
		}
		if err := g.device.Run(); err != nil {
			return 0, err
		}
		return g.device.Loss()
	})
	if err != nil {
		return res, err
	}
	if res.GradNorm, err = dev.Clip(res.Tokens, t.Cfg.MaxGradNorm); err != nil {
		return res, err
	}
	if !finite(res.Loss) || !finite(res.GradNorm) {
		nf := &NonFiniteError{Step: t.Step, Loss: res.Loss, GradNorm: res.GradNorm}
		if t.dev.kept { // these weights came from the last update: go back to before it
			if err := dev.GoBack(t.Opt); err != nil {
				return res, errors.Join(nf, err)
			}
			t.dev.kept, t.dev.download = false, true
			t.Step--
			nf.WentBack = true
		}
		return res, nf
	}
	adamStep := t.Opt.Step
	if err := dev.Update(t.Opt, res.LR); err != nil {
		// an error after AdamW ran (the optimizer's step moved: the values and moments on the
		// device are the update's) leaves the trainer at that update, as a success would: a
		// checkpoint then saves the update's values and moments with its step, which stay
		// true whatever failed after AdamW (no further device call to undo it, which could
		// fail half done). The bf16 weights are written again before the next step.
		if t.Opt.Step != adamStep {
			t.dev.kept, t.dev.download, t.dev.rewrite = true, true, true
			t.Step++
		}
		return res, err
	}
	t.dev.kept, t.dev.download = true, true
	t.Step++
	return res, nil
}

// Sync brings the device's trained values and optimizer moments to t.Params and t.Opt where
// a device keeps them (nothing otherwise, or when the host's are as new): checkpoints, the
// adapter and evaluation on the CPU read the host's.
func (t *Trainer) Sync() error {
	s := &t.dev
	if s.params == nil || !s.download {
		return nil
	}
	if err := s.params.Download(t.values(), t.Opt.M, t.Opt.V); err != nil {
		return fmt.Errorf("lora: bringing the trained parameters back from the device: %w", err)
	}
	s.download = false
	return nil
}

// DeviceMemory is the memory of the trained parameters kept on a device, by kind
// (model.DeviceParams.Memory), and the gradient buffers the compiled training programs hold
// of their own (those their GEMMs do not write into the device's sums); nil before the
// first step on a device, or without one.
func (t *Trainer) DeviceMemory() []model.MemoryPart {
	if t.dev.params == nil {
		return nil
	}
	parts := t.dev.params.Memory()
	var own int64
	for _, g := range t.graphs {
		if p, ok := g.device.(interface{ GradientBytes() int64 }); ok {
			own += p.GradientBytes()
		}
	}
	return append(parts, model.MemoryPart{What: fmt.Sprintf("gradient buffers of %d training programs", len(t.graphs)), Bytes: own})
}

// closeDevice brings the device's state to the host and releases it.
func (t *Trainer) closeDevice() error {
	s := &t.dev
	if s.params == nil {
		return nil
	}
	err := t.Sync()
	err = errors.Join(err, s.params.Close())
	*s = deviceState{}
	return err
}
