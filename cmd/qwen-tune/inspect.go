package main

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/qwen-tune/qwen-tune/checkpoints"
	"github.com/spf13/cobra"
)

func newInspectCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "inspect DIR",
		Short: "Describe a model, GPTQ, LoRA adapter or training checkpoint directory",
		Long: `inspect validates a directory's configs and safetensors headers (no tensor data is read)
and prints the architecture, parameter count, dtypes, shards and total bytes, plus the
quantization settings of a GPTQ directory or the settings of a PEFT LoRA adapter (its
modules saved in full and its trained special-token rows, trainable_token_indices). A lora
training checkpoint (checkpoint-<step>/) has every file validated: the adapter, the trained
parameters and the optimizer state, each parameter with both AdamW moments.`,
		Example: `  qwen-tune inspect ./Qwen-7B-Chat
  qwen-tune inspect --json ./my-adapter | jq .lora`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := checkpoints.Inspect(args[0])
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(r)
			}
			printReport(cmd.OutOrStdout(), r)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object instead of text")
	return cmd
}

func printReport(w io.Writer, r *checkpoints.Report) {
	row := func(k, format string, args ...any) { fmt.Fprintf(w, "%-12s %s\n", k, fmt.Sprintf(format, args...)) }
	row("directory", "%s", r.Dir)
	switch {
	case r.Training != nil:
		row("kind", "LoRA training checkpoint: PEFT adapter, trained parameters and AdamW state")
	case r.Kind == "lora":
		row("kind", "LoRA adapter (PEFT)")
	case r.Kind == "gptq":
		row("kind", "GPTQ-quantized %s", r.Architecture)
	default:
		row("kind", "model %s", r.Architecture)
	}
	if c := r.Config; c != nil {
		row("shape", "%d layers, hidden %d, %d heads x %d, MLP %d, vocab %d, seq_length %d", c.Layers, c.Hidden, c.Heads, c.HeadDim, c.MLPWidth, c.Vocab, c.SeqLength)
		row("long context", "dynamic NTK %v, LogN attention %v", c.DynamicNTK, c.LogNAttention)
	}
	row("parameters", "%s (%s)", commas(r.Parameters), human(float64(r.Parameters), ""))
	row("tensors", "%d in %d file(s), %s bytes (%s)", r.Tensors, len(r.Shards), commas(r.TotalBytes), human(float64(r.TotalBytes), "B"))
	var dts []string
	for dt, n := range r.DTypes {
		dts = append(dts, fmt.Sprintf("%s %s", dt, human(float64(n), "B")))
	}
	sort.Strings(dts)
	row("dtypes", "%s", strings.Join(dts, ", "))
	for _, s := range r.Shards {
		row("  file", "%s: %d tensors, %s", s.File, s.Tensors, human(float64(s.Bytes), "B"))
	}
	if g := r.GPTQ; g != nil {
		row("gptq", "%d bits, group size %d, sym %v, desc_act %v, damp %g, true_sequential %v; %d quantized Linears", g.Bits, g.GroupSize, g.Sym, g.DescAct, g.DampPercent, g.TrueSequential, r.QuantLinears)
	}
	if l := r.LoRA; l != nil {
		row("lora", "r %d, alpha %g (scale %g), dropout %g, targets %s; %d adapted Linears", l.R, l.Alpha, l.Scale, l.Dropout, strings.Join(l.Targets, ","), l.AdaptedLayers)
		if len(l.ModulesToSave) > 0 {
			row("  saved", "%s (trained in full)", strings.Join(l.ModulesToSave, ", "))
		}
		modules := make([]string, 0, len(l.TrainableTokens))
		for m := range l.TrainableTokens {
			modules = append(modules, m)
		}
		sort.Strings(modules)
		for _, m := range modules {
			ids := l.TrainableTokens[m]
			row("  tokens", "%s: %d trained rows, ids %s", m, len(ids), idRanges(ids))
		}
		if l.BaseModel != "" {
			row("  base", "%s", l.BaseModel)
		}
		if l.TrainedOn != nil {
			row("  base kind", "%s", l.TrainedOn)
		}
	}
	if ts := r.Training; ts != nil {
		row("training", "step %d of %d (AdamW step %d); %d trained tensors, %s parameters, each with its AdamW moments", ts.Step, ts.TotalSteps, ts.AdamStep, ts.Tensors, commas(ts.Parameters))
	}
	if r.Kind != "lora" {
		tok := "qwen.tiktoken present"
		if !r.Tokenizer {
			tok = "qwen.tiktoken MISSING: copy it from the original model to tokenize or chat"
		}
		row("tokenizer", "%s", tok)
	}
	if g := r.Generation; g != nil {
		row("generation", "%s, top_p %g, top_k %d, temperature %g, repetition_penalty %g, max_new_tokens %d", g.ChatFormat, g.TopP, g.TopK, g.Temperature, g.RepetitionPenalty, g.MaxNewTokens)
	}
}

func commas(n int64) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if neg {
		return "-" + s
	}
	return s
}

func human(v float64, unit string) string {
	if unit == "B" {
		for _, u := range []string{"B", "KiB", "MiB", "GiB", "TiB"} {
			if v < 1024 || u == "TiB" {
				return fmt.Sprintf("%.1f %s", v, u)
			}
			v /= 1024
		}
	}
	for _, u := range []string{"", "K", "M", "B"} {
		if v < 1000 || u == "B" {
			return strings.TrimSpace(fmt.Sprintf("%.2f %s", v, u))
		}
		v /= 1000
	}
	return ""
}

// idRanges writes token ids as runs: "4096-4303" or "5, 9-11".
func idRanges(ids []int) string {
	var parts []string
	for i := 0; i < len(ids); {
		j := i
		for j+1 < len(ids) && ids[j+1] == ids[j]+1 {
			j++
		}
		if j > i {
			parts = append(parts, fmt.Sprintf("%d-%d", ids[i], ids[j]))
		} else {
			parts = append(parts, fmt.Sprint(ids[i]))
		}
		i = j + 1
	}
	return strings.Join(parts, ", ")
}
