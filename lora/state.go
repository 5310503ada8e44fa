package lora

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/qwen-tune/qwen-tune/checkpoints"
)

// Files of a training checkpoint directory (besides the PEFT adapter files).
const (
	stateFile     = checkpoints.TrainerStateFile
	paramsFile    = checkpoints.TrainerParamsFile
	optimizerFile = checkpoints.OptimizerFile
	// CheckpointPrefix names checkpoint directories inside the output: checkpoint-<step>.
	CheckpointPrefix = "checkpoint-"
)

// TrainerState is trainer_state.json: where the run stands (checkpoints.TrainerState) and
// the run's settings.
type TrainerState struct {
	checkpoints.TrainerState
	Config TrainConfig `json:"config"`
}

// SaveCheckpoint writes a resumable checkpoint as out/checkpoint-<step>: the PEFT adapter
// (with t.Special's token ids), every trained parameter and the optimizer moments bit for
// bit, and the state. It is built in checkpoint-<step>.tmp, which a failure removes, and
// renamed into place (the directory synced); older checkpoints are then removed.
func (t *Trainer) SaveCheckpoint(out, baseModel string, extra []checkpoints.Tensor) (_ string, err error) {
	if err := t.Sync(); err != nil { // the device's values and moments, where it keeps them
		return "", err
	}
	final := filepath.Join(out, CheckpointPrefix+strconv.Itoa(t.Step))
	tmp := final + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return "", fmt.Errorf("lora: %w", err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, os.RemoveAll(tmp))
		}
	}()
	if err := t.Adapter.Save(tmp, baseModel, t.Cfg.ModulesToSave, extra...); err != nil {
		return "", err
	}
	if t.Special != nil {
		if err := t.Special.SaveConfig(tmp); err != nil {
			return "", err
		}
	}
	var params, moments []checkpoints.Tensor
	for i, p := range t.Params {
		shape := p.Value.Shape()
		params = append(params, f32Tensor(p.Name, p))
		moments = append(moments, floatTensor("m."+p.Name, t.Opt.M[i], shape), floatTensor("v."+p.Name, t.Opt.V[i], shape))
	}
	meta := map[string]string{"qwen_tune.format": "trainer-state", "qwen_tune.format_version": "1"}
	if err := checkpoints.WriteFile(filepath.Join(tmp, paramsFile), params, meta); err != nil {
		return "", err
	}
	if err := checkpoints.WriteFile(filepath.Join(tmp, optimizerFile), moments, meta); err != nil {
		return "", err
	}
	st := TrainerState{checkpoints.TrainerState{Format: checkpoints.TrainerFormat, Version: 1, Step: t.Step, TotalSteps: t.Sched.Total, AdamStep: t.Opt.Step}, t.Cfg}
	if err := checkpoints.WriteJSON(filepath.Join(tmp, stateFile), st); err != nil {
		return "", err
	}
	if err := checkpoints.SyncDir(tmp); err != nil {
		return "", err
	}
	if err := os.RemoveAll(final); err != nil {
		return "", fmt.Errorf("lora: %w", err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return "", fmt.Errorf("lora: %w", err)
	}
	if err := checkpoints.SyncDir(out); err != nil {
		return final, err
	}
	old, err := Checkpoints(out)
	if err != nil {
		return final, fmt.Errorf("lora: saved %s, but listing the older checkpoints to remove failed: %w", final, err)
	}
	for _, o := range old {
		if o == final {
			continue
		}
		if err := os.RemoveAll(o); err != nil {
			return final, fmt.Errorf("lora: saved %s, but removing the older %s failed: %w", final, o, err)
		}
	}
	return final, checkpoints.SyncDir(out)
}

// Checkpoints lists out's checkpoint directories, oldest first.
func Checkpoints(out string) ([]string, error) {
	entries, err := os.ReadDir(out)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil // a directory not made yet holds none
	}
	if err != nil {
		return nil, err
	}
	type ck struct {
		step int
		path string
	}
	var cks []ck
	for _, e := range entries {
		name := e.Name()
		if !e.IsDir() || !strings.HasPrefix(name, CheckpointPrefix) {
			continue
		}
		n, err := strconv.Atoi(strings.TrimPrefix(name, CheckpointPrefix))
		if err != nil {
			continue
		}
		cks = append(cks, ck{n, filepath.Join(out, name)})
	}
	sort.Slice(cks, func(i, j int) bool { return cks[i].step < cks[j].step })
	paths := make([]string, len(cks))
	for i, c := range cks {
		paths[i] = c.path
	}
	return paths, nil
}

// ReadTrainerState reads a checkpoint's trainer_state.json.
func ReadTrainerState(dir string) (*TrainerState, error) {
	if _, err := checkpoints.ReadTrainerState(dir); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return nil, fmt.Errorf("lora: %w", err)
	}
	var st TrainerState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("lora: %s: %v", filepath.Join(dir, stateFile), err)
	}
	return &st, nil
}

// LoadCheckpoint restores the trained parameters, optimizer moments and step from dir.
func (t *Trainer) LoadCheckpoint(dir string) error {
	st, err := ReadTrainerState(dir)
	if err != nil {
		return err
	}
	pk, err := checkpoints.OpenFiles(dir, filepath.Join(dir, paramsFile))
	if err != nil {
		return err
	}
	defer pk.Close()
	ok, err := checkpoints.OpenFiles(dir, filepath.Join(dir, optimizerFile))
	if err != nil {
		return err
	}
	defer ok.Close()
	// Every tensor is checked (name, shape, a floating type, its size) before any is copied:
	// a checkpoint refused at its last tensor leaves the trainer as it was. The data stay in
	// the files (mapped) until each is converted into its place.
	type load struct {
		src checkpoints.Tensor
		dst []float32
	}
	var loads []load
	for i, p := range t.Params {
		shape := shape64(p.Value.Shape())
		for _, r := range []struct {
			ck   *checkpoints.Checkpoint
			name string
			dst  []float32
		}{{pk, p.Name, p.Value.Data().([]float32)}, {ok, "m." + p.Name, t.Opt.M[i]}, {ok, "v." + p.Name, t.Opt.V[i]}} {
			x, err := r.ck.Tensor(r.name)
			if err == nil && !slices.Equal(x.Shape, shape) {
				err = fmt.Errorf("tensor %q has shape %v, the trainer's is %v", r.name, x.Shape, shape)
			}
			if err == nil {
				err = x.CheckFloat32()
			}
			if err != nil {
				return fmt.Errorf("lora: resuming from %s: %w (the checkpoint was made with other settings)", dir, err)
			}
			loads = append(loads, load{x, r.dst})
		}
	}
	for _, l := range loads {
		if err := l.src.Float32Into(l.dst); err != nil {
			return fmt.Errorf("lora: resuming from %s: %w", dir, err)
		}
	}
	t.Step, t.Opt.Step = st.Step, st.AdamStep
	t.before = nil // no update gave these values: nothing to go back to
	t.dev.hostChanged()
	return nil
}

func shape64(s []int) []int64 {
	out := make([]int64, len(s))
	for i, d := range s {
		out[i] = int64(d)
	}
	return out
}
