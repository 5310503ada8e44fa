//go:build cudaemu && !qtcuda

package cuda

// The state a ParamSet keeps for going back from a non-finite step: in page-locked host
// memory, copied on the copy stream after each update, and the emulated driver's checks of
// that stream's ordering.

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"gorgonia.org/tensor"

	"github.com/qwen-tune/qwen-tune/autograd"
	"github.com/qwen-tune/qwen-tune/optim"
)

// TestEmulatedParamSetGoesBackFromHost: the set holds 16 bytes a parameter on the device
// and no bf16 copy of a parameter no program has read (a bf16 copy is made for the second
// parameter, as for one a program reads other than by GEMMs), the copy of an update's result
// is still in flight after Update, and GoBack gives the state before the last update bit for
// bit, the bf16 copy included, after one update, after two, and again after going back and
// updating once more.
func TestEmulatedParamSetGoesBackFromHost(t *testing.T) {
	d := openEmulated(t)
	r := rand.New(rand.NewPCG(5, 6))
	sizes := []int{1000, 77}
	n := int64(1077)
	values, m, v := make([][]float32, len(sizes)), make([][]float32, len(sizes)), make([][]float32, len(sizes))
	names := make([]string, len(sizes))
	for i, k := range sizes {
		values[i], m[i], v[i] = autograd.Ref.Normal(r, k), autograd.Ref.Normal(r, k), autograd.Ref.Normal(r, k)
		for j := range v[i] {
			v[i][j] *= v[i][j]
		}
		names[i] = fmt.Sprintf("parameter %d", i)
	}
	before := d.Allocated
	s, err := d.NewParamSet(names, []*tensor.Dense{denseOf(slices.Clone(values[0]), sizes[0]), denseOf(slices.Clone(values[1]), sizes[1])})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	}()
	if got, want := d.Allocated-before, 16*n; got != want { // float32 values, moments and sums
		t.Errorf("the set allocated %d bytes on the device, want %d (16 a parameter)", got, want)
	}
	if err := s.copyFor(1); err != nil {
		t.Fatal(err)
	}
	if got, want := d.Allocated-before, 16*n+2*int64(sizes[1]); got != want {
		t.Errorf("with a bf16 copy of the second parameter the set holds %d bytes on the device, want %d", got, want)
	}
	if s.Bytes() != 16*n || s.HostBytes() != 24*n {
		t.Errorf("Bytes %d, HostBytes %d for %d parameters", s.Bytes(), s.HostBytes(), n)
	}
	if err := s.Upload(values, m, v); err != nil {
		t.Fatal(err)
	}
	o := &optim.AdamW{Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1}
	update := func(seed uint64) paramState {
		t.Helper()
		g := autograd.Ref.Normal(rand.New(rand.NewPCG(seed, 1)), int(n))
		if err := d.drv.memcpyHtoD(s.grad.Ptr, unsafe.Pointer(&g[0]), n*4); err != nil {
			t.Fatal(err)
		}
		if err := s.Update(o, 1e-2); err != nil {
			t.Fatal(err)
		}
		if len(d.drv.(*emuDriver).pending) != 3 {
			t.Errorf("after an update, %d copies pending on the copy stream, want 3 (values and moments, overlapping the next step)", len(d.drv.(*emuDriver).pending))
		}
		var st paramState
		if err := st.download(d, s); err != nil {
			t.Fatal(err)
		}
		return st
	}
	back := func(want paramState, step int, what string) {
		t.Helper()
		if err := s.GoBack(o); err != nil {
			t.Fatal(err)
		}
		var got paramState
		if err := got.download(d, s); err != nil {
			t.Fatal(err)
		}
		for _, x := range []struct {
			what      string
			got, want [][]float32
		}{{"values", got.values, want.values}, {"first moments", got.m, want.m}, {"second moments", got.v, want.v}, {"bf16 weights", got.bf16, want.bf16}} {
			if !slices.Equal(slices.Concat(x.got...), slices.Concat(x.want...)) {
				t.Errorf("%s: the %s after going back are not those before the update", what, x.what)
			}
		}
		if o.Step != step {
			t.Errorf("%s: step %d after going back, want %d", what, o.Step, step)
		}
	}
	var start paramState
	if err := start.download(d, s); err != nil {
		t.Fatal(err)
	}
	update(1)
	back(start, 0, "one update")
	if err := s.GoBack(o); err == nil {
		t.Error("went back twice from one update")
	}
	first := update(1)
	update(2)
	back(first, 1, "two updates")
	second := update(2)
	update(3)
	back(second, 2, "going back, then two updates")
}

// TestEmulatedCopyStream: the copy stream's copies wait for the stream's work and run when
// an event after them is waited for; the emulated driver refuses the misuse it can see and
// shows the rest as the data a GPU could read.
func TestEmulatedCopyStream(t *testing.T) {
	d := openEmulated(t)
	e := d.drv.(*emuDriver)
	src := []float32{1, 2, 3, 4, 5, 6, 7, 8}
	b, err := Upload(d, src, "source")
	if err != nil {
		t.Fatal(err)
	}
	h, err := e.memAllocHost(32)
	if err != nil {
		t.Fatal(err)
	}
	host := unsafe.Slice((*float32)(h), 8)
	var onStream, onCopies *emuEvent
	for _, ev := range []**emuEvent{&onStream, &onCopies} {
		if *ev, err = e.eventCreate(); err != nil {
			t.Fatal(err)
		}
	}
	expect := func(err error, want string) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v, want one saying %q", err, want)
		}
	}
	// the stream's work before the copy must be waited for
	if err := d.copyDtoD(b.Ptr, b.Ptr+16, 16); err != nil {
		t.Fatal(err)
	}
	expect(e.memcpyDtoHAsync(h, b.Ptr, 32), "not ordered after the stream's work")
	if err := e.eventRecord(onStream); err != nil {
		t.Fatal(err)
	}
	if err := e.copyWaitEvent(onStream); err != nil {
		t.Fatal(err)
	}
	if err := e.memcpyDtoHAsync(h, b.Ptr, 32); err != nil {
		t.Fatal(err)
	}
	if err := e.copyEventRecord(onCopies); err != nil {
		t.Fatal(err)
	}
	if host[0] != 0 {
		t.Errorf("the copy ran before anything waited for it: %v", host)
	}
	// synchronous calls the pending copy conflicts with
	expect(e.memcpyHtoD(b.Ptr, unsafe.Pointer(&src[0]), 4), "has yet to read")
	expect(e.memcpyHtoD(b.Ptr+64, h, 4), "has yet to write") // 64: past the copy's source, in no allocation either way
	expect(e.memFreeHost(h), "has yet to write")
	expect(e.memFree(b.Ptr), "has yet to read")
	// the stream's later work overwrites the source before the copy ran: the host sees it
	if err := d.copyDtoD(b.Ptr, b.Ptr+4, 4); err != nil {
		t.Fatal(err)
	}
	if err := e.streamWaitEvent(onCopies); err != nil {
		t.Fatal(err)
	}
	if want := []float32{6, 6, 7, 8, 5, 6, 7, 8}; !slices.Equal(host, want) {
		t.Errorf("host copy %v, want %v", host, want)
	}
	if len(e.pending) != 0 {
		t.Errorf("%d copies pending after the stream waited for them", len(e.pending))
	}
	if err := e.memFreeHost(h); err != nil {
		t.Error(err)
	}
	d.Free(b)
}
