//go:build cudaemu && !qtcuda

package autograd

// A ParamSet's refusals leave the device's state as it was.

import (
	"math/rand/v2"
	"slices"
	"testing"

	"gorgonia.org/tensor"
)

// TestEmulatedRefusedUploadChangesNothing: an Upload refused for a slice of the wrong size
// (here the first moments') writes nothing: the values, moments and bf16 weights on the
// device stay those of the last upload.
func TestEmulatedRefusedUploadChangesNothing(t *testing.T) {
	d := openEmulated(t)
	r := rand.New(rand.NewPCG(7, 8))
	sizes := []int{300, 21}
	values, m, v := make([][]float32, len(sizes)), make([][]float32, len(sizes)), make([][]float32, len(sizes))
	for i, k := range sizes {
		values[i], m[i], v[i] = randF32(r, k), randF32(r, k), randF32(r, k)
	}
	s, err := d.NewParamSet([]string{"a", "b"}, []*tensor.Dense{denseOf(slices.Clone(values[0]), sizes[0]), denseOf(slices.Clone(values[1]), sizes[1])})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	}()
	if err := s.Upload(values, m, v); err != nil {
		t.Fatal(err)
	}
	var before paramState
	if err := before.download(d, s); err != nil {
		t.Fatal(err)
	}
	other := [][]float32{randF32(r, sizes[0]), randF32(r, sizes[1])}
	short := [][]float32{m[0], m[1][:sizes[1]-1]}
	if err := s.Upload(other, short, v); err == nil {
		t.Fatal("an upload of first moments of the wrong size was accepted")
	}
	var after paramState
	if err := after.download(d, s); err != nil {
		t.Fatal(err)
	}
	for _, x := range []struct {
		what      string
		got, want [][]float32
	}{{"values", after.values, before.values}, {"first moments", after.m, before.m}, {"second moments", after.v, before.v}, {"bf16 weights", after.bf16, before.bf16}} {
		if !slices.Equal(slices.Concat(x.got...), slices.Concat(x.want...)) {
			t.Errorf("the refused upload changed the %s on the device", x.what)
		}
	}
}

// TestEmulatedParamSetRefusesATensorTwice: a set given one tensor twice is refused (its two
// float32 copies would be updated apart and write the one bf16 weight in turn), and leaves
// nothing allocated.
func TestEmulatedParamSetRefusesATensorTwice(t *testing.T) {
	d := openEmulated(t)
	a := tensor.New(tensor.WithShape(4, 8), tensor.WithBacking(make([]float32, 32)))
	b := tensor.New(tensor.WithShape(2, 8), tensor.WithBacking(make([]float32, 16)))
	if err := d.Trim(); err != nil {
		t.Fatal(err)
	}
	before := d.Allocated
	s, err := d.NewParamSet([]string{"a", "b", "a again"}, []*tensor.Dense{a, b, a})
	if err == nil {
		s.Close()
		t.Fatal("a parameter set of one tensor twice was accepted")
	}
	t.Log(err)
	if err := d.Trim(); err != nil {
		t.Fatal(err)
	}
	if d.Allocated != before {
		t.Errorf("the refused set left %d bytes allocated", d.Allocated-before)
	}
	if d.ParamSetOf([]*tensor.Dense{a}) != nil || d.trained[a] != nil {
		t.Error("the refused set still keeps a")
	}
}
