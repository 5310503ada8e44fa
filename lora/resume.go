package lora

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"

	"github.com/qwen-tune/qwen-tune/checkpoints"
	"github.com/qwen-tune/qwen-tune/data"
)

// RunFile is a run's record in its output directory: what it started from and with.
const RunFile = "training_config.json"

// runRecord is RunFile: the model, the data and its sha256, the settings and the data
// statistics. Every start (a resumed one included) rewrites it.
type runRecord struct {
	Model       string      `json:"model"`
	Data        string      `json:"data"`
	DataSHA256  string      `json:"data_sha256,omitempty"`
	InitAdapter string      `json:"init_adapter,omitempty"`
	Cfg         TrainConfig `json:"config"`
	Stats       data.Stats  `json:"data_stats"`
}

// readRunRecord reads out's RunFile; nil when there is none.
func readRunRecord(out string) (*runRecord, error) {
	path := filepath.Join(out, RunFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("lora: %w", err)
	}
	var rec runRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("lora: %s: %v (the run's record is damaged: start a new run in a new --out)", path, err)
	}
	return &rec, nil
}

// RunSettings returns the settings of the run in out (its RunFile); ok is false when out
// holds no run.
func RunSettings(out string) (cfg TrainConfig, ok bool, err error) {
	rec, err := readRunRecord(out)
	if err != nil || rec == nil {
		return TrainConfig{}, false, err
	}
	return rec.Cfg, true, nil
}

// resumePoint is where a run starts: a checkpoint or step 0, and what was found on the way.
type resumePoint struct {
	from    string   // the checkpoint to restore, or "" to start at step 0
	dataSHA string   // sha256 of o.Data
	notes   []string // what resuming did or found, for the user
}

// resume prepares a resumed run: it tidies o.Out after a killed run, finds the latest
// checkpoint (or none: the run starts again from step 0), and checks that the model, the
// data's content and the settings are the run's. o.Train left at its zero value takes the
// run's settings.
func (o *Options) resume(rp *resumePoint) error {
	notes, err := recoverOut(o.Out)
	rp.notes = append(rp.notes, notes...)
	if err != nil {
		return err
	}
	rec, err := readRunRecord(o.Out)
	if err != nil {
		return err
	}
	cks, err := Checkpoints(o.Out)
	if err != nil {
		return fmt.Errorf("lora: %w", err)
	}
	var saved *TrainConfig
	if len(cks) > 0 {
		rp.from = cks[len(cks)-1]
		st, err := ReadTrainerState(rp.from)
		if err != nil {
			return err
		}
		saved = &st.Config
	}
	if rec != nil {
		saved = &rec.Cfg // rewritten at every start: the newest settings
	}
	switch {
	case saved == nil:
		rp.notes = append(rp.notes, fmt.Sprintf("%s holds no run to resume: starting a new one", o.Out))
		return o.checkFresh()
	case rp.from == "":
		rp.notes = append(rp.notes, fmt.Sprintf("%s holds no checkpoint (the run stopped before its first one): starting again from step 0 with the run's settings", o.Out))
	}
	var changed []string
	if rec != nil {
		if rec.DataSHA256 != "" && rec.DataSHA256 != rp.dataSHA {
			return fmt.Errorf("--resume: --data %s is not the data the run in %s was trained on (sha256 %.12s..., now %.12s...): resume with that data, or start a new run in a new --out",
				o.Data, o.Out, rec.DataSHA256, rp.dataSHA)
		}
		if filepath.Clean(rec.Data) != filepath.Clean(o.Data) {
			rp.notes = append(rp.notes, fmt.Sprintf("--data %s has the content of the run's %s (same sha256)", o.Data, rec.Data))
		}
		if filepath.Clean(rec.Model) != filepath.Clean(o.ModelDir) {
			changed = append(changed, fmt.Sprintf("--model %s (the run has %s)", o.ModelDir, rec.Model))
		}
		switch {
		case o.InitAdapter == "":
			o.InitAdapter = rec.InitAdapter
		case filepath.Clean(o.InitAdapter) != filepath.Clean(rec.InitAdapter):
			changed = append(changed, fmt.Sprintf("--init-adapter %s (the run has %q)", o.InitAdapter, rec.InitAdapter))
		}
	}
	if reflect.DeepEqual(o.Train, TrainConfig{}) {
		o.Train = *saved
	} else {
		c, n := compareSettings(*saved, o.Train)
		changed = append(changed, c...)
		rp.notes = append(rp.notes, n...)
	}
	if len(changed) > 0 {
		return fmt.Errorf("--resume: %s differ from the run in %s (%s): leave them out or give the run's values to resume, or start a new run in a new --out",
			strings.Join(changed, ", "), o.Out, RunFile)
	}
	return nil
}

// checkFresh makes sure a new run can start in o.Out: no run there (that takes --resume),
// and nothing else either.
func (o *Options) checkFresh() error {
	if _, err := os.Stat(filepath.Join(o.Out, RunFile)); err == nil {
		return fmt.Errorf("--out %s already holds a run (%s): add --resume to continue it (or to start it again when it has no checkpoint), or choose a new --out (nothing was written)", o.Out, RunFile)
	}
	cks, err := Checkpoints(o.Out)
	if err != nil {
		return fmt.Errorf("lora: %w", err)
	}
	if len(cks) > 0 {
		return fmt.Errorf("--out %s already holds checkpoints of a run: add --resume to continue it, or choose a new --out (nothing was written)", o.Out)
	}
	if _, err := checkpoints.CheckOutDir(o.Out, "--out"); err != nil {
		return err
	}
	if _, err := os.Stat(o.Metrics); err == nil {
		return fmt.Errorf("--metrics %s already exists: choose another file, or leave --metrics out (nothing was written)", o.Metrics)
	}
	return nil
}

// recoverOut tidies the output of a killed run: a checkpoint-<step>.tmp whose files all
// verify and that is newer than every checkpoint is renamed into place (it was killed just
// before its rename); any other is removed, as are temporary files. It returns what it did.
func recoverOut(out string) ([]string, error) {
	entries, err := os.ReadDir(out)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("lora: %w", err)
	}
	var notes []string
	for _, e := range entries {
		name := e.Name()
		step, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(name, CheckpointPrefix), ".tmp"))
		if !e.IsDir() || !checkpoints.IsTemp(name) || err != nil {
			continue
		}
		tmp, final := filepath.Join(out, name), filepath.Join(out, CheckpointPrefix+strconv.Itoa(step))
		why := ""
		cks, err := Checkpoints(out)
		if err != nil {
			return notes, fmt.Errorf("lora: %w", err)
		}
		r, err := checkpoints.Inspect(tmp)
		switch {
		case err != nil:
			why = err.Error()
		case r.Training == nil || r.Training.Step != step:
			why = "its trainer_state.json is for another step"
		case len(cks) > 0 && stepOf(cks[len(cks)-1]) >= step:
			why = "a checkpoint as new is complete"
		}
		if why != "" {
			if err := os.RemoveAll(tmp); err != nil {
				return notes, fmt.Errorf("lora: %w", err)
			}
			notes = append(notes, fmt.Sprintf("removed %s, left by a run killed while saving it (%s)", tmp, why))
			continue
		}
		if err := os.Rename(tmp, final); err != nil {
			return notes, fmt.Errorf("lora: %w", err)
		}
		notes = append(notes, fmt.Sprintf("%s was complete (every file verified) but not yet renamed when the run stopped: kept as %s", tmp, final))
	}
	removed, err := checkpoints.RemoveTemps(out)
	for _, name := range removed {
		notes = append(notes, fmt.Sprintf("removed %s, left by a run killed while writing it", filepath.Join(out, name)))
	}
	if err != nil {
		return notes, err
	}
	return notes, checkpoints.SyncDir(out)
}

// stepOf is the step of a checkpoint directory's name, or -1.
func stepOf(dir string) int {
	n, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(dir), CheckpointPrefix))
	if err != nil {
		return -1
	}
	return n
}
