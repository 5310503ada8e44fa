package quantize

// What a model's shapes allow: the code widths AutoGPTQ's layout packs and the group sizes
// that divide every quantized layer's input width, checked before any calibration runs.

import (
	"fmt"
	"strings"

	"github.com/qwen-tune/qwen-tune/checkpoints"
)

// CheckShapes checks that every Linear of a model with config c can be quantized and packed
// with o: bits the AutoGPTQ layout packs (a BitsError otherwise), input widths divisible by
// the group size (a GroupSizeError naming the layers and the sizes that would work), widths
// divisible by the codes per int32.
func CheckShapes(c *checkpoints.Config, o Options) error {
	if o.Bits != 2 && o.Bits != 4 && o.Bits != 8 {
		return &BitsError{o.Bits}
	}
	if o.GroupSize > 0 {
		if err := checkGroupSize(c, o.GroupSize); err != nil {
			return err
		}
	}
	if err := o.Validate(c.HiddenSize); err != nil {
		return err
	}
	per := 32 / o.Bits
	for _, d := range []struct {
		what string
		n    int
	}{{"hidden_size", c.HiddenSize}, {"heads x head dim", c.ProjectionSize()}, {"MLP width (intermediate_size/2)", c.MLPWidth()}} {
		if d.n%per != 0 {
			return fmt.Errorf("quantize: %s %d is not a multiple of %d, as %d-bit packing needs", d.what, d.n, per, o.Bits)
		}
	}
	return nil
}

// BitsError is a code width the AutoGPTQ layout cannot hold (3 bits quantize, but this
// program does not pack them).
type BitsError struct{ Bits int }

func (e *BitsError) Error() string { return "quantize: bits " + e.Detail() }

// Detail is the message without the package and option name.
func (e *BitsError) Detail() string {
	return fmt.Sprintf("%d: expected 2, 4 or 8 (the code widths packed into AutoGPTQ's int32 layout)", e.Bits)
}

// GroupSizeError is a group size that does not divide some layers' input widths.
type GroupSizeError struct {
	GroupSize int
	Layers    string // the layers it does not divide, with their input widths
	Valid     []int  // the group sizes that divide every layer's inputs, largest first
}

func (e *GroupSizeError) Error() string {
	return fmt.Sprintf("quantize: group size %d: %s", e.GroupSize, e.Detail())
}

// Detail is the message without the package and option name.
func (e *GroupSizeError) Detail() string {
	valid := make([]string, len(e.Valid))
	for i, v := range e.Valid {
		valid[i] = fmt.Sprint(v)
	}
	return fmt.Sprintf("it must divide every quantized layer's input width; it does not divide %s. Group sizes that work for this model: %s or -1 (one group per row)", e.Layers, strings.Join(valid, ", "))
}

// checkGroupSize names the block Linears whose input width g does not divide.
func checkGroupSize(c *checkpoints.Config, g int) error {
	inputs := []struct {
		name string
		k    int
	}{{"attn.c_attn", c.HiddenSize}, {"attn.c_proj", c.ProjectionSize()}, {"mlp.w1", c.HiddenSize}, {"mlp.w2", c.HiddenSize}, {"mlp.c_proj", c.MLPWidth()}}
	var widths []int
	names := map[int][]string{}
	common := 0
	for _, in := range inputs {
		common = gcd(common, in.k)
		if in.k%g != 0 {
			if names[in.k] == nil {
				widths = append(widths, in.k)
			}
			names[in.k] = append(names[in.k], in.name)
		}
	}
	if len(widths) == 0 {
		return nil
	}
	var parts []string
	for _, k := range widths {
		parts = append(parts, fmt.Sprintf("%s (%d inputs)", strings.Join(names[k], ", "), k))
	}
	e := &GroupSizeError{GroupSize: g, Layers: strings.Join(parts, ", ")}
	for d := common; d >= 2 && len(e.Valid) < 8; d-- {
		if common%d == 0 {
			e.Valid = append(e.Valid, d)
		}
	}
	return e
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
