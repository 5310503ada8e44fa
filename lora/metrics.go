package lora

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/qwen-tune/qwen-tune/checkpoints"
)

// metricLine is one line of metrics.jsonl.
func metricLine(r StepResult) map[string]any {
	m := map[string]any{"step": r.Step, "lr": r.LR, "loss": r.Loss, "grad_norm": r.GradNorm, "tokens": r.Tokens, "seq_tokens": r.Seen}
	if r.EvalLoss != 0 {
		m["eval_loss"] = r.EvalLoss
	}
	return m
}

// ReadMetrics reads the steps in a metrics.jsonl file; a missing file has none. A last line
// without its newline that is not a whole step was cut short when a run was killed, and is
// dropped; any other line that is not a step is an error naming it.
func ReadMetrics(path string) ([]StepResult, error) {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("lora: %w", err)
	}
	var hist []StepResult
	lines := strings.Split(string(b), "\n")
	for i, line := range lines {
		if line == "" {
			continue
		}
		var r StepResult
		err := json.Unmarshal([]byte(line), &r)
		if err != nil && i == len(lines)-1 {
			break // torn: the file does not end with a newline
		}
		if err != nil {
			return nil, fmt.Errorf("lora: %s:%d: not a metrics line (%v): remove the line, or start a new run in a new --out", path, i+1, err)
		}
		hist = append(hist, r)
	}
	return hist, nil
}

// truncateMetrics keeps the steps of path before step (those logged after the checkpoint a
// run resumes from go), so a resumed run's metrics have each step once.
func truncateMetrics(path string, step int) error {
	hist, err := ReadMetrics(path)
	if err != nil {
		return err
	}
	var b []byte
	for _, h := range hist {
		if h.Step < step {
			line, err := json.Marshal(metricLine(h))
			if err != nil {
				return err
			}
			b = append(append(b, line...), '\n')
		}
	}
	return checkpoints.WriteBytes(path, b)
}

// metricsWriter appends one JSON line per step, each in one write; a write that fails
// part-way (a full disk) is cut off again, so the file never ends in half a line.
type metricsWriter struct {
	f    *os.File
	size int64 // the length of the whole lines written
}

func appendMetrics(path string) (*metricsWriter, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lora: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lora: %w", err)
	}
	return &metricsWriter{f: f, size: st.Size()}, nil
}

func (w *metricsWriter) write(r StepResult) error {
	line, err := json.Marshal(metricLine(r))
	if err != nil {
		return fmt.Errorf("lora: metrics of step %d: %w", r.Step, err)
	}
	n, err := w.f.Write(append(line, '\n'))
	if err != nil {
		if terr := w.f.Truncate(w.size); terr != nil {
			err = errors.Join(err, terr)
		}
		return fmt.Errorf("lora: writing %s: %w", w.f.Name(), err)
	}
	w.size += int64(n)
	return nil
}

func (w *metricsWriter) Close() error { return w.f.Close() }
