//go:build cudaemu && !qtcuda

package cuda

import (
	"testing"

	"gorgonia.org/tensor"
)

// TestEmulatedFailedParamSetLeavesNoWeight: a NewParamSet that fails after allocating the
// bf16 copy of a parameter no program had uploaded leaves that copy neither in the device's
// weights (where the next program would read it, never uploaded, instead of uploading the
// host's values) nor allocated.
func TestEmulatedFailedParamSetLeavesNoWeight(t *testing.T) {
	d := openEmulated(t)
	a := tensor.New(tensor.WithShape(4, 8), tensor.WithBacking(make([]float32, 32)))
	b := tensor.New(tensor.WithShape(4, 8), tensor.WithBacking(make([]float32, 32)))
	for i := range a.Data().([]float32) {
		a.Data().([]float32)[i] = float32(i + 1)
	}
	// b's device copy is not a bf16 copy of b (what a reused host address would leave)
	wrong, err := d.Alloc(16, "wrong copy")
	if err != nil {
		t.Fatal(err)
	}
	d.weights[b] = wrong
	if err := d.Trim(); err != nil {
		t.Fatal(err)
	}
	before := d.Allocated
	if _, err := d.NewParamSet([]string{"a", "b"}, []*tensor.Dense{a, b}); err == nil {
		t.Fatal("a parameter set over a wrong device copy was made")
	}
	if w := d.weights[a]; w != nil {
		t.Errorf("the failed parameter set left a's bf16 copy (%d bytes, never uploaded) in the device's weights", w.Bytes)
	}
	if d.trained[a] != nil {
		t.Error("the failed parameter set still keeps a")
	}
	if err := d.Trim(); err != nil {
		t.Fatal(err)
	}
	if d.Allocated != before {
		t.Errorf("the failed parameter set left %d bytes allocated", d.Allocated-before)
	}
}

// TestEmulatedParamSetErrors: NewParamSet's refusals are errors (not a crash), and leave
// nothing allocated: a parameter another set keeps, a parameter not float32.
func TestEmulatedParamSetErrors(t *testing.T) {
	d := openEmulated(t)
	a := tensor.New(tensor.WithShape(4, 8), tensor.WithBacking(make([]float32, 32)))
	first, err := d.NewParamSet([]string{"a"}, []*tensor.Dense{a})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	if err := d.Trim(); err != nil {
		t.Fatal(err)
	}
	before := d.Allocated
	check := func(what string, f func() (*ParamSet, error)) {
		t.Helper()
		defer func() {
			if r := recover(); r != nil {
				t.Errorf("%s: NewParamSet panicked: %v", what, r)
			}
		}()
		if _, err := f(); err == nil {
			t.Errorf("%s: no error", what)
		}
		if err := d.Trim(); err != nil {
			t.Fatal(err)
		}
		if d.Allocated != before {
			t.Errorf("%s: %d bytes left allocated", what, d.Allocated-before)
		}
	}
	b := tensor.New(tensor.WithShape(4, 8), tensor.WithBacking(make([]float32, 32)))
	check("kept by another set", func() (*ParamSet, error) { return d.NewParamSet([]string{"b", "a"}, []*tensor.Dense{b, a}) })
	h := tensor.New(tensor.WithShape(4, 8), tensor.WithBacking(make([]float64, 32)))
	check("float64", func() (*ParamSet, error) { return d.NewParamSet([]string{"b", "h"}, []*tensor.Dense{b, h}) })
}
