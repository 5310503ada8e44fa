package checkpoints

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Files of a training checkpoint (lora's checkpoint-<step>/), besides the PEFT adapter's
// adapter_config.json and adapter_model.safetensors.
const (
	TrainerStateFile  = "trainer_state.json"         // TrainerState
	TrainerParamsFile = "trainer_params.safetensors" // every trained parameter, F32
	OptimizerFile     = "optimizer.safetensors"      // AdamW's "m.<name>" and "v.<name>" of each
	TrainerFormat     = "qwen-tune-lora-trainer"     // TrainerState.Format
)

// TrainerState is a training checkpoint's trainer_state.json: where the run stands. Config
// holds the run's settings as the training package writes them.
type TrainerState struct {
	Format     string `json:"format"`
	Version    int    `json:"version"`
	Step       int    `json:"step"`
	TotalSteps int    `json:"total_steps"`
	AdamStep   int    `json:"adam_step"`
}

// TrainingSummary is what a training checkpoint holds besides its adapter.
type TrainingSummary struct {
	Step       int   `json:"step"`
	TotalSteps int   `json:"total_steps"`
	AdamStep   int   `json:"adam_step"`
	Tensors    int   `json:"trained_tensors"`
	Parameters int64 `json:"trained_parameters"`
}

// ReadTrainerState reads and checks a checkpoint's trainer_state.json.
func ReadTrainerState(dir string) (*TrainerState, error) {
	path := filepath.Join(dir, TrainerStateFile)
	var st TrainerState
	if err := readJSONFile(path, &st); err != nil {
		return nil, err
	}
	switch {
	case st.Format != TrainerFormat || st.Version != 1:
		return nil, &ConfigError{File: path, Key: "format", Msg: fmt.Sprintf("expected %q version 1, got %q version %d: not a qwen-tune training checkpoint", TrainerFormat, st.Format, st.Version)}
	case st.Step < 0 || st.TotalSteps < 0 || st.AdamStep < 0:
		return nil, &ConfigError{File: path, Msg: fmt.Sprintf("step %d, total_steps %d and adam_step %d must not be negative", st.Step, st.TotalSteps, st.AdamStep)}
	}
	return &st, nil
}

// inspectTraining validates the training files of a checkpoint directory whose adapter r
// describes: the state, every trained parameter (F32) with AdamW's two moments of the same
// shape in the optimizer file, and no file besides these and the adapter's (a temporary
// file means the checkpoint was never finished).
func inspectTraining(dir string, r *Report) error {
	st, err := ReadTrainerState(dir)
	if err != nil {
		return err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("checkpoints: %w", err)
	}
	known := []string{TrainerStateFile, TrainerParamsFile, OptimizerFile, "adapter_config.json", "adapter_model.safetensors"}
	for _, e := range entries {
		if !slices.Contains(known, e.Name()) {
			return fmt.Errorf("checkpoints: %s holds %s, which no training checkpoint has: the checkpoint was not finished or was changed; resume from another one", dir, e.Name())
		}
	}
	params, err := OpenFiles(dir, filepath.Join(dir, TrainerParamsFile))
	if err != nil {
		return err
	}
	defer params.Close()
	opt, err := OpenFiles(dir, filepath.Join(dir, OptimizerFile))
	if err != nil {
		return err
	}
	defer opt.Close()
	ts := &TrainingSummary{Step: st.Step, TotalSteps: st.TotalSteps, AdamStep: st.AdamStep}
	for _, name := range params.Names() {
		info, _, _ := params.Info(name)
		if info.DType != F32 {
			return fmt.Errorf("checkpoints: %s: trained parameter %q is %s, expected F32", filepath.Join(dir, TrainerParamsFile), name, info.DType)
		}
		for _, moment := range []string{"m.", "v."} {
			mi, _, ok := opt.Info(moment + name)
			if !ok {
				return fmt.Errorf("checkpoints: %s lacks %q, the optimizer state of %q", filepath.Join(dir, OptimizerFile), moment+name, name)
			}
			if mi.DType != F32 || !slices.Equal(mi.Shape, info.Shape) {
				return fmt.Errorf("checkpoints: %s: %q is %s %s, expected F32 %s as its parameter", filepath.Join(dir, OptimizerFile), moment+name, mi.DType, shapeString(mi.Shape), shapeString(info.Shape))
			}
		}
		ts.Tensors++
		ts.Parameters += info.NumElements()
	}
	for _, name := range opt.Names() {
		m, isM := strings.CutPrefix(name, "m.")
		v, isV := strings.CutPrefix(name, "v.")
		if !(isM && params.has(m) || isV && params.has(v)) {
			return fmt.Errorf("checkpoints: %s holds %q, which is no moment of a trained parameter", filepath.Join(dir, OptimizerFile), name)
		}
	}
	if ts.Tensors == 0 {
		return fmt.Errorf("checkpoints: %s holds no trained parameter", filepath.Join(dir, TrainerParamsFile))
	}
	r.Training = ts
	return nil
}

func (c *Checkpoint) has(name string) bool {
	_, _, ok := c.Info(name)
	return ok
}
