//go:build qtcuda || cudaemu

package cuda

// The trained parameters of a run kept on the device, with everything the optimizer needs,
// so that no gradient and no weight crosses to the host between steps:
//
//	master [n] float32   the parameters' values (the optimizer's, as the host's p.Value)
//	m, v   [n] float32   AdamW's moments
//	grad   [n] float32   the step's gradient sum, then its mean, clipped
//	bf16 copies           of the parameters a program reads other than as a GEMM's weight
//	                      (Device.weights by tensor, as Compile uploads them), or uploaded
//	                      before the set was made, rewritten from master by each update;
//	                      the GEMMs round the others from master where they read them
//	                      (trained_weights.go)
//	host [2][3n] float32  in page-locked host memory: master, m and v after the last two
//	                      changes (Upload, Update, GoBack), for going back from a
//	                      non-finite step
//
// 16 bytes a parameter on the device besides the bf16 copies, 24 on the host. After each
// Update (and Upload) the new values and moments are copied into one of the host buffers on
// the driver's copy stream, which waits (an event) for the update; the copy overlaps the
// next step's forward and backward, and the next Update waits (an event) for it before it
// overwrites what it reads. The other host buffer then holds the state before the last
// update, which GoBack uploads; two buffers because the copy of an update's result runs
// while the state before it may still be needed.
//
// n is the parameters' sizes together, laid out one after another. A step is: Accumulate
// before each micro-batch's program runs (its gradients, weighted by the micro-batch's
// trained tokens, go to the sums: written there by the weight-gradient GEMMs of a program
// compiled into the set, added by grad_accumulate after the run otherwise), Clip (divided
// by the step's tokens, the global norm, clipped), Update (AdamW at the host schedule's
// learning rate); only the norm's partial sums come back to the host. Each kernel is
// element-wise or reduces in a fixed order: a step gives the same bits every run, and the
// host's on the same gradients (the norm to the last bits of its sum's order); the GEMMs
// that write the sums round once where the host rounds up to three times (a few ulps).
//
// The programs' GEMMs read the parameters in bf16, as they read every weight: they round the
// activations to bf16 as well, so float32 LoRA matrices would change only the rounding of A
// and B, and would need float32 GEMM paths in the emitters. The float32 values are what the
// optimizer updates: steps smaller than bf16's resolution add up there.

import (
	"errors"
	"fmt"
	"slices"
	"unsafe"

	"gorgonia.org/tensor"

	"github.com/qwen-tune/qwen-tune/optim"
)

// ParamSet is a run's trained parameters on the device (see above). Its methods must be
// called from the device's goroutine.
type ParamSet struct {
	d      *Device
	names  []string
	keys   []*tensor.Dense // the values: Device.weights' keys
	sizes  []int64
	offs   []int64 // where each parameter starts in the flat buffers, in floats
	n      int64
	master *Buffer
	m, v   *Buffer
	grad   *Buffer
	bf16   []*Buffer
	// host are two page-locked copies of master, m and v; cur is the one that holds (or is
	// being copied) the device's state, the other the state before the last update when
	// kept
	host    [2]unsafe.Pointer
	cur     int
	updated devEvent   // on the stream after an update: the copy stream waits for it
	copied  devEvent   // on the copy stream after the copy: the next update waits for it
	copying bool       // a copy was issued that the host has not waited for
	kept    bool       // host[1-cur] holds the state before the last update
	keptAt  int        // the optimizer's step count then
	armed   []*Program // programs Accumulate armed that have not run yet
}

// NewParamSet keeps the float32 parameters values (named names, for errors) on d: it
// allocates their state and takes over the bf16 weight buffers of those a program has
// uploaded already (they stay with the device as uploaded weights do). Programs compiled
// later read the set's values (trained_weights.go). Call Upload before the first step.
func (d *Device) NewParamSet(names []string, values []*tensor.Dense) (s *ParamSet, err error) {
	if len(names) != len(values) || len(values) == 0 {
		return nil, fmt.Errorf("cuda: a parameter set of %d values with %d names", len(values), len(names))
	}
	set := &ParamSet{d: d, names: names}
	s = set
	var made []*tensor.Dense // parameters whose bf16 copy this call allocated
	defer func() {
		if err == nil {
			return
		}
		// a refusal or a failed allocation: nothing of the set stays, not even a bf16
		// copy made here (never uploaded, a program would read it as the weight)
		for _, key := range made {
			d.Free(d.weights[key])
			delete(d.weights, key)
		}
		err = errors.Join(err, set.Close())
	}()
	for i, v := range values {
		if _, ok := v.Data().([]float32); !ok || v.Size() == 0 {
			return nil, fmt.Errorf("cuda: parameter %s is not a float32 tensor: only those train on the device", names[i])
		}
		key := v
		if o := d.trained[key]; o != nil {
			return nil, fmt.Errorf("cuda: parameter %s is kept by another parameter set on %s", names[i], d.Name)
		}
		if j := slices.Index(s.keys, key); j >= 0 {
			return nil, fmt.Errorf("cuda: parameters %s and %s are one tensor: a parameter set keeps each once", names[j], names[i])
		}
		s.keys, s.sizes, s.offs = append(s.keys, key), append(s.sizes, int64(v.Size())), append(s.offs, s.n)
		s.n += int64(v.Size())
	}
	for _, b := range []struct {
		buf   **Buffer
		bytes int64
		what  string
	}{{&s.master, s.n * 4, "trained parameters (float32)"}, {&s.m, s.n * 4, "AdamW first moments"}, {&s.v, s.n * 4, "AdamW second moments"},
		{&s.grad, s.n * 4, "gradient sums"}} {
		if *b.buf, err = d.Alloc(b.bytes, b.what); err != nil {
			return nil, err
		}
	}
	for i := range s.host {
		if s.host[i], err = d.drv.memAllocHost(3 * s.n * 4); err != nil {
			return nil, fmt.Errorf("cuda: allocating %.1f MiB of page-locked host memory for the trained parameters and moments before an update: %w",
				float64(3*s.n*4)/(1<<20), cudaErr("cuMemAllocHost", err))
		}
	}
	for _, e := range []*devEvent{&s.updated, &s.copied} {
		if *e, err = d.drv.eventCreate(); err != nil {
			return nil, cudaErr("cuEventCreate", err)
		}
	}
	if d.trained == nil {
		d.trained = map[*tensor.Dense]*ParamSet{}
	}
	for i, key := range s.keys {
		b := d.weights[key]
		if b != nil && b.Bytes != s.sizes[i]*2 {
			return nil, fmt.Errorf("cuda: parameter %s: its device copy holds %d bytes, not %d bf16 values", names[i], b.Bytes, s.sizes[i])
		}
		if b == nil && !roundTrainedAtUse {
			if b, err = d.Alloc(s.sizes[i]*2, names[i]); err != nil {
				return nil, err
			}
			d.weights[key] = b
			made = append(made, key)
		}
		s.bf16 = append(s.bf16, b)
		d.trained[key] = s
	}
	return s, nil
}

// Bytes is the device memory the set holds besides the bf16 weights the programs read: 16
// bytes a parameter (values, moments and gradient sums in float32).
func (s *ParamSet) Bytes() int64 { return 4 * 4 * s.n }

// HostBytes is the page-locked host memory the set holds: 24 bytes a parameter (two copies
// of the values and moments).
func (s *ParamSet) HostBytes() int64 { return 2 * 3 * 4 * s.n }

// MemoryPart is one kind of memory a ParamSet holds.
type MemoryPart struct {
	What  string
	Bytes int64
	Host  bool // page-locked host memory, not the device's
}

// Memory is the set's memory by kind: on the device the float32 values, the AdamW moments,
// the gradient sums and the bf16 copies the programs read; on the host the two copies of
// the values and moments for going back.
func (s *ParamSet) Memory() []MemoryPart {
	var bf16 int64
	for _, b := range s.bf16 {
		if b != nil {
			bf16 += b.Bytes
		}
	}
	return []MemoryPart{
		{What: "trained values (float32)", Bytes: s.master.Bytes},
		{What: "AdamW moments (float32)", Bytes: s.m.Bytes + s.v.Bytes},
		{What: "gradient sums (float32)", Bytes: s.grad.Bytes},
		{What: "bf16 copies the programs read", Bytes: bf16},
		{What: "values and moments before an update", Bytes: s.HostBytes(), Host: true},
	}
}

// Len is how many parameters the set holds, in floats.
func (s *ParamSet) Len() int64 { return s.n }

// slice is parameter i's part of a flat float32 buffer b.
func (s *ParamSet) slice(b *Buffer, i int) *Buffer { return b.Slice(s.offs[i]*4, s.sizes[i]*4) }

// check validates host slices (one per parameter, of its size) against the set.
func (s *ParamSet) check(what string, xs [][]float32) error {
	if len(xs) != len(s.sizes) {
		return fmt.Errorf("cuda: %d %s for a parameter set of %d", len(xs), what, len(s.sizes))
	}
	for i, x := range xs {
		if int64(len(x)) != s.sizes[i] {
			return fmt.Errorf("cuda: parameter %s: %d %s values for %d", s.names[i], len(x), what, s.sizes[i])
		}
	}
	return nil
}

// Upload puts the host's values and AdamW moments (one slice per parameter) on the device
// and writes the bf16 copies from them: the state to train from (a fresh start, or a
// checkpoint resumed). What was kept for going back is dropped.
func (s *ParamSet) Upload(values, m, v [][]float32) error {
	xs := []struct {
		what string
		host [][]float32
		dev  *Buffer
	}{{"values", values, s.master}, {"first moments", m, s.m}, {"second moments", v, s.v}}
	for _, x := range xs { // all checked before anything is written
		if err := s.check(x.what, x.host); err != nil {
			return err
		}
	}
	if err := s.waitCopy(); err != nil { // the copy in flight reads what this overwrites
		return err
	}
	for _, x := range xs {
		for i, h := range x.host {
			if err := cudaErr("cuMemcpyHtoD("+s.names[i]+")", s.d.drv.memcpyHtoD(x.dev.Ptr+devPtr(s.offs[i]*4), unsafe.Pointer(&h[0]), s.sizes[i]*4)); err != nil {
				return err
			}
		}
	}
	s.kept = false
	if err := s.weights(); err != nil {
		return err
	}
	return s.snapshot()
}

// snapshot copies master, m and v into host[cur] on the copy stream, after the stream's
// work so far (the update or upload that wrote them).
func (s *ParamSet) snapshot() error {
	drv := s.d.drv
	if err := cudaErr("cuEventRecord", drv.eventRecord(s.updated)); err != nil {
		return err
	}
	if err := cudaErr("cuStreamWaitEvent(copy stream)", drv.copyWaitEvent(s.updated)); err != nil {
		return err
	}
	for i, b := range []*Buffer{s.master, s.m, s.v} {
		if err := cudaErr("cuMemcpyDtoHAsync", drv.memcpyDtoHAsync(unsafe.Add(s.host[s.cur], int64(i)*s.n*4), b.Ptr, s.n*4)); err != nil {
			return err
		}
	}
	if err := cudaErr("cuEventRecord(copy stream)", drv.copyEventRecord(s.copied)); err != nil {
		return err
	}
	s.copying = true
	return nil
}

// waitCopy waits on the host for the copy in flight, if any.
func (s *ParamSet) waitCopy() error {
	if !s.copying {
		return nil
	}
	if err := cudaErr("cuEventSynchronize(copy stream)", s.d.drv.eventSynchronize(s.copied)); err != nil {
		return err
	}
	s.copying = false
	return nil
}

// Download copies the device's values and AdamW moments into the host slices (one per
// parameter): for a checkpoint, the adapter, or anything else the host reads.
func (s *ParamSet) Download(values, m, v [][]float32) error {
	for _, x := range []struct {
		what string
		host [][]float32
		dev  *Buffer
	}{{"values", values, s.master}, {"first moments", m, s.m}, {"second moments", v, s.v}} {
		if err := s.check(x.what, x.host); err != nil {
			return err
		}
		for i, h := range x.host {
			if err := Download(s.d, h, s.slice(x.dev, i)); err != nil {
				return err
			}
		}
	}
	return nil
}

// Gradients copies the step's gradient sums (after Clip: the clipped mean gradient) into
// the host slices, one per parameter.
func (s *ParamSet) Gradients(grads [][]float32) error {
	if err := s.check("gradients", grads); err != nil {
		return err
	}
	for i, h := range grads {
		if err := Download(s.d, h, s.slice(s.grad, i)); err != nil {
			return err
		}
	}
	return nil
}

// weights rewrites the programs' bf16 weights from the float32 values (rounded to nearest,
// ties to even, as the first upload).
func (s *ParamSet) weights() error {
	for i, b := range s.bf16 {
		if b == nil { // rounded where the programs read it (trained_weights.go)
			continue
		}
		if err := s.d.ToBF16Rows(b, s.slice(s.master, i), 1, int(s.sizes[i]), int(s.sizes[i])); err != nil {
			return err
		}
	}
	return nil
}

// Accumulate makes p's next run add the gradients it keeps, times tokens, to the step's sums;
// first starts them from zero. p is compiled into s (CompileGradInto) or for s's parameters
// in s's order (GradOptions.Of); any other program is refused. Call it
// before p.Run. A program compiled into s (CompileGradInto) writes its GEMMs' weight
// gradients there as it runs; the others' kept gradients are added after the run with the
// host's float32 arithmetic: sum += g * float32(tokens).
func (s *ParamSet) Accumulate(p *Program, tokens int, first bool) error {
	if p.d != s.d {
		return fmt.Errorf("cuda: a program of another device")
	}
	if len(p.keep) != len(s.sizes) {
		return fmt.Errorf("cuda: a program with %d gradients for a parameter set of %d", len(p.keep), len(s.sizes))
	}
	if p.into != nil && p.into.set != s {
		return fmt.Errorf("cuda: a program compiled into another parameter set")
	}
	if p.into == nil && !slices.Equal(p.of, s.keys) { // sizes alike would not tell the gradients apart
		if p.of == nil {
			return fmt.Errorf("cuda: a program that does not say whose gradients it keeps: compile it into the parameter set (CompileGradInto) or for its parameters (GradOptions.Of)")
		}
		i := 0
		for i < len(p.of) && i < len(s.keys) && p.of[i] == s.keys[i] {
			i++
		}
		return fmt.Errorf("cuda: a program compiled for other parameters than the set's, or in another order: its gradient %d is not that of %s", i, s.names[min(i, len(s.names)-1)])
	}
	for i, v := range p.keep {
		if v.stride != v.cols || v.bf16 || v.parts != 0 || int64(v.rows)*int64(v.cols) != s.sizes[i] {
			return fmt.Errorf("cuda: the gradient of %s is not a whole float32 value of %d elements", s.names[i], s.sizes[i])
		}
	}
	if p.into == nil {
		p.into = &gradInto{set: s, direct: make([]bool, len(p.keep))}
	}
	if first { // a new step: programs armed for an abandoned one (a failed run) are not
		for _, q := range s.armed {
			q.into.armed = false
		}
		s.armed = s.armed[:0]
	}
	if !p.into.armed {
		s.armed = append(s.armed, p)
	}
	p.into.tokens, p.into.first, p.into.armed = tokens, first, true
	return nil
}

// gradInto is where a program's kept gradients go: a ParamSet's sums, directly from the
// GEMMs that compute them (direct) or added after the run; armed by Accumulate for one run.
type gradInto struct {
	set    *ParamSet
	direct []bool
	tokens int
	first  bool
	armed  bool
}

// accumulate adds the kept gradients no GEMM wrote into the sums (grad_accumulate), once
// per Accumulate: the end of a loss program's run.
func (p *Program) accumulate() error {
	in := p.into
	if in == nil || !in.armed {
		return nil
	}
	in.armed = false
	s, f := in.set, 0
	s.armed = slices.DeleteFunc(s.armed, func(q *Program) bool { return q == p })
	if in.first {
		f = 1
	}
	for i, v := range p.keep {
		if in.direct[i] {
			continue
		}
		if err := s.d.launch("grad_accumulate", grid(s.sizes[i]), trainBlock, 0, s.slice(s.grad, i), v.ptr(), s.sizes[i], float32(in.tokens), f); err != nil {
			return err
		}
	}
	return nil
}

// GradientBytes is the device memory of the kept gradients the program writes in buffers
// of its own (in its arena): those no GEMM writes into a ParamSet's sums.
func (p *Program) GradientBytes() int64 {
	var n int64
	for i, v := range p.keep {
		if p.into == nil || !p.into.direct[i] {
			n += int64(v.rows) * int64(v.cols) * 4
		}
	}
	return n
}

// ParamSetOf is the set that keeps exactly values, in their order (nil if none does):
// programs computing their gradients compile into it (CompileGradInto).
func (d *Device) ParamSetOf(values []*tensor.Dense) *ParamSet {
	if len(values) == 0 {
		return nil
	}
	s := d.trained[values[0]]
	if s == nil || !slices.Equal(s.keys, values) {
		return nil
	}
	return s
}

// Clip turns the step's sums into the mean gradient over tokens (the host's float32
// division) and clips it to the global norm maxNorm as optim.ClipGradNorm (ClipGradNorm on
// the device: the sum of squares in a fixed order). It returns the norm before clipping.
func (s *ParamSet) Clip(tokens int, maxNorm float64) (float64, error) {
	if tokens <= 0 {
		return 0, fmt.Errorf("cuda: a step of %d tokens", tokens)
	}
	if len(s.armed) > 0 {
		return 0, fmt.Errorf("cuda: %d programs were given to Accumulate and not run since: Accumulate comes before each micro-batch's run", len(s.armed))
	}
	if err := s.d.launch("div_f32", grid(s.n), trainBlock, 0, s.grad, s.n, float32(tokens)); err != nil {
		return 0, err
	}
	return s.d.ClipGradNorm([]*Buffer{s.grad}, []int64{s.n}, maxNorm)
}

// Update advances o.Step and runs AdamW with o's hyperparameters (its host moments are not
// used) at learning rate lr on the clipped mean gradient, rewrites the programs' bf16
// weights, and starts the copy of the new state to the host; the copy of the state before
// it (the last snapshot, which the stream waits for first) is kept for GoBack.
func (s *ParamSet) Update(o *optim.AdamW, lr float64) error {
	if s.copying {
		if err := cudaErr("cuStreamWaitEvent", s.d.drv.streamWaitEvent(s.copied)); err != nil {
			return err
		}
	}
	if err := s.d.AdamW(s.master, s.m, s.v, s.grad, s.n, o, o.Step+1, lr); err != nil {
		return err
	}
	// master, m and v are the update's from here: the last snapshot (host[cur]) is the state
	// before it, which GoBack reads as host[1-cur] even if what follows fails
	s.kept, s.keptAt = true, o.Step
	o.Step++
	s.cur = 1 - s.cur
	if err := s.weights(); err != nil {
		return err
	}
	return s.snapshot()
}

// GoBack restores the values, moments and o.Step from before the last Update, once: it
// uploads the host's copy of them.
func (s *ParamSet) GoBack(o *optim.AdamW) error {
	if !s.kept {
		return fmt.Errorf("cuda: no update to go back from")
	}
	if err := s.waitCopy(); err != nil { // the copy of the update's result reads master, m and v
		return err
	}
	prev := s.host[1-s.cur]
	for i, b := range []*Buffer{s.master, s.m, s.v} {
		if err := cudaErr("cuMemcpyHtoD(trained parameters and moments before the last update)", s.d.drv.memcpyHtoD(b.Ptr, unsafe.Add(prev, int64(i)*s.n*4), s.n*4)); err != nil {
			return err
		}
	}
	s.cur, s.kept, o.Step = 1-s.cur, false, s.keptAt
	return s.weights()
}

// Close frees the set's memory (nothing once the device is closed), after the copy in
// flight. The bf16 weights stay with the device, holding the last update's values, for
// programs that still read them.
func (s *ParamSet) Close() error {
	d := s.d
	for _, key := range s.keys {
		if d.trained[key] == s {
			delete(d.trained, key)
		}
	}
	for _, q := range s.armed { // their runs would write the freed sums
		q.into.armed = false
	}
	s.armed = nil
	if d.pool == nil { // closed: every buffer is gone
		return nil
	}
	errs := []error{s.waitCopy()}
	for i, p := range s.host {
		if p != nil {
			errs = append(errs, cudaErr("cuMemFreeHost", d.drv.memFreeHost(p)))
			s.host[i] = nil
		}
	}
	for _, e := range []*devEvent{&s.updated, &s.copied} {
		var none devEvent
		if *e != none {
			errs = append(errs, cudaErr("cuEventDestroy", d.drv.eventDestroy(e)))
			*e = none
		}
	}
	for _, b := range []*Buffer{s.master, s.m, s.v, s.grad} {
		d.Free(b)
	}
	s.master, s.m, s.v, s.grad = nil, nil, nil, nil
	return errors.Join(errs...)
}
