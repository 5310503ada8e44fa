package lora

import (
	"fmt"
	"strings"
)

// setting is one field of TrainConfig, named by the flag that sets it.
type setting struct {
	flag string
	get  func(c *TrainConfig) any
	// free settings may change when a run resumes: they do not change what is trained.
	free bool
}

// settings lists every field of TrainConfig (a test checks that none is missing).
var settings = []setting{
	{flag: "--lora-r", get: func(c *TrainConfig) any { return c.LoRA.R }},
	{flag: "--lora-alpha", get: func(c *TrainConfig) any { return c.LoRA.Alpha }},
	{flag: "--lora-dropout", get: func(c *TrainConfig) any { return c.LoRA.Dropout }},
	{flag: "--targets", get: func(c *TrainConfig) any { return strings.Join(c.LoRA.Targets, ",") }},
	{flag: "--lr", get: func(c *TrainConfig) any { return c.LR }},
	{flag: "--schedule", get: func(c *TrainConfig) any { return c.Schedule }},
	{flag: "--warmup-steps", get: func(c *TrainConfig) any { return c.WarmupSteps }},
	{flag: "--warmup-ratio", get: func(c *TrainConfig) any { return c.WarmupRatio }},
	{flag: "--weight-decay", get: func(c *TrainConfig) any { return c.WeightDecay }},
	{flag: "--adam-beta1", get: func(c *TrainConfig) any { return c.Beta1 }},
	{flag: "--adam-beta2", get: func(c *TrainConfig) any { return c.Beta2 }},
	{flag: "--adam-eps", get: func(c *TrainConfig) any { return c.Eps }},
	{flag: "--max-grad-norm", get: func(c *TrainConfig) any { return c.MaxGradNorm }},
	{flag: "--batch-size", get: func(c *TrainConfig) any { return c.BatchSize }},
	{flag: "--grad-accum", get: func(c *TrainConfig) any { return c.GradAccum }},
	{flag: "--steps", get: func(c *TrainConfig) any { return c.Steps }, free: true},
	{flag: "--epochs", get: func(c *TrainConfig) any { return c.Epochs }, free: true},
	{flag: "--max-len", get: func(c *TrainConfig) any { return c.MaxLen }},
	{flag: "--seed", get: func(c *TrainConfig) any { return c.Seed }},
	{flag: "--eval-every", get: func(c *TrainConfig) any { return c.EvalEvery }, free: true},
	{flag: "--save-every", get: func(c *TrainConfig) any { return c.SaveEvery }, free: true},
	{flag: "--mask", get: func(c *TrainConfig) any { return c.Mask }},
	{flag: "--val-ratio", get: func(c *TrainConfig) any { return c.ValRatio }},
	{flag: "--train-special-tokens", get: func(c *TrainConfig) any { return c.TrainSpecialTokens }},
	{flag: "--modules-to-save", get: func(c *TrainConfig) any { return strings.Join(c.ModulesToSave, ",") }},
	{flag: "--pack", get: func(c *TrainConfig) any { return c.Pack }},
}

// compareSettings lists the settings of now that differ from the run's (saved): changed
// are those a resumed run may not change, notes say which of the free ones (length,
// evaluation and checkpoint cadence) did.
func compareSettings(saved, now TrainConfig) (changed, notes []string) {
	for _, s := range settings {
		was, is := s.get(&saved), s.get(&now)
		if fmt.Sprint(was) == fmt.Sprint(is) {
			continue
		}
		if s.free {
			note := fmt.Sprintf("%s changed from %v to %v", s.flag, was, is)
			if s.flag == "--steps" || s.flag == "--epochs" {
				note += ": the run's length and learning-rate schedule follow the new value from here on"
			}
			notes = append(notes, note)
			continue
		}
		changed = append(changed, fmt.Sprintf("%s %v (the run has %v)", s.flag, is, was))
	}
	return changed, notes
}
