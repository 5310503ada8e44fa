package model

import (
	"errors"
	"fmt"

	"github.com/qwen-tune/qwen-tune/autograd"
)

// maxEvalGraphs is how many compiled graphs (one per sequence length) an Evaluator keeps;
// one more frees them all.
const maxEvalGraphs = 4

// Evaluator scores sequences with the inference graph (dynamic NTK from each sequence's
// length and LogN, as Qwen evaluates long contexts), one sequence at a time.
type Evaluator struct {
	m       *Model
	mode    Mode
	runners map[int]*Runner
}

// NewEvaluator returns an evaluator of m for inference (NTK and LogN beyond seq_length).
func (m *Model) NewEvaluator() *Evaluator { return m.NewEvaluatorMode(Inference) }

// NewEvaluatorMode returns an evaluator in the given mode: Evaluation scores as the training
// graph computes the loss but without dropout (validation during fine-tuning), and without
// NTK or LogN.
func (m *Model) NewEvaluatorMode(mode Mode) *Evaluator {
	return &Evaluator{m: m, mode: mode, runners: map[int]*Runner{}}
}

// Score returns the summed next-token cross-entropy of one sequence and how many labels
// took part (labels align with ids; -100 is skipped; the loss shifts by one).
func (e *Evaluator) Score(ids, labels []int) (sum float64, n int, err error) {
	cfg := e.m.Config
	if len(ids) != len(labels) {
		return 0, 0, fmt.Errorf("model: %d labels for %d ids", len(labels), len(ids))
	}
	if len(ids) > MaxPositions {
		return 0, 0, fmt.Errorf("model: a sequence of %d tokens exceeds the %d positions Qwen-7B supports", len(ids), MaxPositions)
	}
	r, ok := e.runners[len(ids)]
	if !ok {
		if len(e.runners) >= maxEvalGraphs {
			if err := e.Close(); err != nil {
				return 0, 0, err
			}
		}
		if r, err = e.m.NewRunner(1, len(ids), e.mode, false, true); err != nil {
			return 0, 0, err
		}
		e.runners[len(ids)] = r
	}
	st := r.Step
	st.IDs, st.Labels = st.IDs[:0], st.Labels[:0]
	for i, id := range ids {
		if id < 0 || id >= cfg.VocabSize {
			return 0, 0, fmt.Errorf("model: token id %d at position %d is outside the vocabulary [0, %d)", id, i, cfg.VocabSize)
		}
		st.IDs = append(st.IDs, int32(id))
		st.Labels = append(st.Labels, int32(labels[i]))
	}
	st.Base = nil
	st.RotaryBase = cfg.RotaryEmbBase
	if cfg.UseDynamicNTK && e.mode == Inference {
		st.RotaryBase = NTKBase(cfg.RotaryEmbBase, NTKAlpha(len(ids), cfg.SeqLength), cfg.KVChannels)
	}
	if cfg.UseLogNAttn && e.mode == Inference {
		st.LogNSeq = cfg.SeqLength
	}
	if err := r.Run(); err != nil {
		return 0, 0, err
	}
	mean, err := r.Loss()
	if err != nil {
		return 0, 0, err
	}
	n = countTargets(labels)
	return mean * float64(n), n, nil
}

func countTargets(labels []int) int {
	n := 0
	for _, l := range labels[min(1, len(labels)):] {
		if l != autograd.IgnoreIndex {
			n++
		}
	}
	return n
}

// Close releases the evaluator's graphs.
func (e *Evaluator) Close() error {
	var errs []error
	for k, r := range e.runners {
		errs = append(errs, r.Close())
		delete(e.runners, k)
	}
	return errors.Join(errs...)
}
