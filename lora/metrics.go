package lora

import (
	"encoding/json"
	"io"
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

// ReadMetrics reads the steps in a metrics.jsonl file; a missing file has none, and lines
// that are not a step (a line cut short by a crash) are passed over.
func ReadMetrics(path string) ([]StepResult, error) {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var hist []StepResult
	for _, line := range strings.Split(string(b), "\n") {
		var r StepResult
		if line != "" && json.Unmarshal([]byte(line), &r) == nil {
			hist = append(hist, r)
		}
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
	var b strings.Builder
	for _, h := range hist {
		if h.Step < step {
			line, err := json.Marshal(metricLine(h))
			if err != nil {
				return err
			}
			b.Write(append(line, '\n'))
		}
	}
	return checkpoints.WriteAtomic(path, func(w io.Writer) error {
		_, err := io.WriteString(w, b.String())
		return err
	})
}

// metricsWriter appends one JSON line per step.
type metricsWriter struct {
	f   *os.File
	enc *json.Encoder
}

func appendMetrics(path string) (*metricsWriter, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	return &metricsWriter{f: f, enc: json.NewEncoder(f)}, nil
}

func (w *metricsWriter) write(r StepResult) error { return w.enc.Encode(metricLine(r)) }

func (w *metricsWriter) Close() error { return w.f.Close() }
