//go:build cudaemu && !qtcuda

package cuda

// A ParamSet's refusals leave the device's state as it was.

import (
	"math/rand/v2"
	"slices"
	"testing"
	"unsafe"

	"gorgonia.org/tensor"

	"github.com/qwen-tune/qwen-tune/autograd"
	"github.com/qwen-tune/qwen-tune/optim"
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
		values[i], m[i], v[i] = autograd.Ref.Normal(r, k), autograd.Ref.Normal(r, k), autograd.Ref.Normal(r, k)
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
	other := [][]float32{autograd.Ref.Normal(r, sizes[0]), autograd.Ref.Normal(r, sizes[1])}
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

// failingLaunches is the emulated driver with the launches of one kernel refused.
type failingLaunches struct {
	*emuDriver
	kernel string
}

func (f *failingLaunches) launch(name string, grid, block, shared int, params []uint64) error {
	if name == f.kernel {
		return &emuError{"CUDA_ERROR_LAUNCH_FAILED", "refused by the test"}
	}
	return f.emuDriver.launch(name, grid, block, shared, params)
}

// TestEmulatedGoBackAfterAFailedUpdate: an Update whose AdamW ran but whose bf16 weights
// could not be written returns the error; GoBack then restores the state before that update
// with its step (not the state one update earlier with the failed update's step).
func TestEmulatedGoBackAfterAFailedUpdate(t *testing.T) {
	d := openEmulated(t)
	r := rand.New(rand.NewPCG(9, 10))
	const n = 257
	values, m, v := [][]float32{autograd.Ref.Normal(r, n)}, [][]float32{autograd.Ref.Normal(r, n)}, [][]float32{make([]float32, n)}
	s, err := d.NewParamSet([]string{"a"}, []*tensor.Dense{denseOf(slices.Clone(values[0]), n)})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	}()
	if err := s.copyFor(0); err != nil { // a bf16 copy, as for a parameter a program gathers
		t.Fatal(err)
	}
	if err := s.Upload(values, m, v); err != nil {
		t.Fatal(err)
	}
	o := &optim.AdamW{Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1}
	grad := func(seed uint64) {
		t.Helper()
		g := autograd.Ref.Normal(rand.New(rand.NewPCG(seed, 1)), n)
		if err := d.drv.memcpyHtoD(s.grad.Ptr, unsafe.Pointer(&g[0]), n*4); err != nil {
			t.Fatal(err)
		}
	}
	grad(1)
	if err := s.Update(o, 1e-2); err != nil {
		t.Fatal(err)
	}
	var first paramState
	if err := first.download(d, s); err != nil {
		t.Fatal(err)
	}
	grad(2)
	e := d.drv.(*emuDriver)
	d.drv = &failingLaunches{emuDriver: e, kernel: "to_bf16_rows"}
	if err := s.Update(o, 1e-2); err == nil {
		t.Fatal("the update succeeded with its bf16 weights refused")
	}
	d.drv = e
	if err := s.GoBack(o); err != nil {
		t.Fatal(err)
	}
	var got paramState
	if err := got.download(d, s); err != nil {
		t.Fatal(err)
	}
	if o.Step != 1 {
		t.Errorf("step %d after going back from the failed second update, want 1", o.Step)
	}
	for _, x := range []struct {
		what      string
		got, want [][]float32
	}{{"values", got.values, first.values}, {"first moments", got.m, first.m}, {"second moments", got.v, first.v}, {"bf16 weights", got.bf16, first.bf16}} {
		if !slices.Equal(slices.Concat(x.got...), slices.Concat(x.want...)) {
			t.Errorf("the %s after going back are not those before the failed update", x.what)
		}
	}
}

// TestEmulatedReleaseWeightsKeepsTrainedOnes: ReleaseWeights leaves the bf16 weights a live
// ParamSet keeps (its updates write them: freed, they were memory the device hands out
// again); after the set's Close it frees them as any uploaded weight.
func TestEmulatedReleaseWeightsKeepsTrainedOnes(t *testing.T) {
	d := openEmulated(t)
	r := rand.New(rand.NewPCG(11, 12))
	const n = 96
	a := denseOf(autograd.Ref.Normal(r, n), n)
	s, err := d.NewParamSet([]string{"a"}, []*tensor.Dense{a})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.copyFor(0); err != nil { // a bf16 copy, as for a parameter a program gathers
		t.Fatal(err)
	}
	if err := s.Upload([][]float32{a.Data().([]float32)}, [][]float32{make([]float32, n)}, [][]float32{make([]float32, n)}); err != nil {
		t.Fatal(err)
	}
	d.ReleaseWeights()
	other, err := d.Alloc(2*n, "after ReleaseWeights") // the size of the bf16 weight
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Poison(other); err != nil {
		t.Fatal(err)
	}
	g := autograd.Ref.Normal(r, n)
	if err := d.drv.memcpyHtoD(s.grad.Ptr, unsafe.Pointer(&g[0]), n*4); err != nil {
		t.Fatal(err)
	}
	if err := s.Update(&optim.AdamW{Beta1: 0.9, Beta2: 0.95, Eps: 1e-8}, 1e-2); err != nil {
		t.Fatal(err)
	}
	got := make([]uint32, n/2)
	if err := Download(d, got, other); err != nil {
		t.Fatal(err)
	}
	for i, x := range got {
		if x != 0x7fc07fc0 {
			t.Errorf("word %d of a buffer allocated after ReleaseWeights is %#x: the update wrote it", i, x)
			break
		}
	}
	d.Free(other)
	if d.weights[a] == nil {
		t.Error("ReleaseWeights freed the bf16 weight of a live parameter set")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	d.ReleaseWeights()
	if len(d.weights) != 0 {
		t.Errorf("%d weights left after the set's Close and ReleaseWeights", len(d.weights))
	}
}
