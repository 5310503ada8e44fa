package optim

import (
	"fmt"
	"math"
)

// Schedule gives the learning rate of each optimizer step (0-based).
type Schedule struct {
	Kind   string // "cosine" or "constant"
	Peak   float64
	Warmup int // linear warmup steps from 0
	Total  int // steps in the run (cosine reaches 0 at Total)
}

// WarmupSteps converts a warmup ratio to steps as transformers does: ceil(ratio * total).
func WarmupSteps(ratio float64, total int) int { return int(math.Ceil(ratio * float64(total))) }

// Validate checks the schedule.
func (s Schedule) Validate() error {
	switch {
	case s.Kind != "cosine" && s.Kind != "constant":
		return fmt.Errorf("optim: schedule %q: expected cosine or constant", s.Kind)
	case s.Peak < 0:
		return fmt.Errorf("optim: learning rate %g is negative", s.Peak)
	case s.Warmup < 0 || s.Total <= 0:
		return fmt.Errorf("optim: %d warmup steps of %d total", s.Warmup, s.Total)
	}
	return nil
}

// LR is transformers' get_cosine_schedule_with_warmup (or get_constant_schedule_with_warmup):
// step/warmup during warmup, then 0.5 (1 + cos(pi progress)) of the peak for cosine.
func (s Schedule) LR(step int) float64 {
	if step < s.Warmup {
		return s.Peak * float64(step) / float64(max(1, s.Warmup))
	}
	if s.Kind == "constant" {
		return s.Peak
	}
	progress := float64(step-s.Warmup) / float64(max(1, s.Total-s.Warmup))
	return s.Peak * max(0, 0.5*(1+math.Cos(math.Pi*progress)))
}
