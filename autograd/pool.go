package autograd

// The output buffers of a Machine's ops. An op allocates its result through its base
// (result), which takes a buffer of the same element type and length back from the
// machine's pool when one is free, zeroed as a new one would be; the machine puts a buffer
// back when the value holding it dies. Outside a Machine (a TapeMachine, a plain Do) the pool
// is nil and results are ordinary allocations.

import (
	"math"
	"unsafe"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

type poolKey struct {
	dt tensor.Dtype
	n  int
}

type pool struct {
	free map[poolKey][]any          // []float32 or []float64 backings ready for reuse
	lent map[unsafe.Pointer]poolKey // backings handed out, by their first element
}

func newPool() *pool {
	return &pool{free: map[poolKey][]any{}, lent: map[unsafe.Pointer]poolKey{}}
}

// pooled is an op whose results can come from a pool.
type pooled interface{ usePool(*pool) }

// poisonOverwritten fills a reused buffer handed out by overwrite with NaN (for tests: an
// element the op forgets to write shows).
var poisonOverwritten bool

func fill[T Float](d []T, v T) {
	for i := range d {
		d[i] = v
	}
}

// get is a zeroed tensor of type dt and the given shape.
func (p *pool) get(dt tensor.Dtype, shape ...int) *tensor.Dense { return p.take(true, dt, shape) }

// overwrite is a tensor of type dt and the given shape for an op that writes every element
// of it: a reused buffer keeps what it held.
func (p *pool) overwrite(dt tensor.Dtype, shape ...int) *tensor.Dense {
	return p.take(false, dt, shape)
}

func (p *pool) take(zero bool, dt tensor.Dtype, shape []int) *tensor.Dense {
	k := poolKey{dt, tensor.Shape(shape).TotalSize()}
	if p == nil || k.n == 0 || (dt != tensor.Float32 && dt != tensor.Float64) {
		return tensor.New(tensor.Of(dt), tensor.WithShape(shape...))
	}
	var data any
	if l := p.free[k]; len(l) > 0 {
		data, p.free[k] = l[len(l)-1], l[:len(l)-1]
		switch d := data.(type) {
		case []float32:
			if zero {
				clear(d)
			} else if poisonOverwritten {
				fill(d, float32(math.NaN()))
			}
		case []float64:
			if zero {
				clear(d)
			} else if poisonOverwritten {
				fill(d, math.NaN())
			}
		}
	} else if dt == tensor.Float32 {
		data = make([]float32, k.n)
	} else {
		data = make([]float64, k.n)
	}
	t := tensor.New(tensor.WithShape(shape...), tensor.WithBacking(data))
	p.lent[first(data)] = k
	return t
}

// put takes back the backing of d if this pool lent it.
func (p *pool) put(d *tensor.Dense) {
	data := d.Data()
	ptr := first(data)
	k, ok := p.lent[ptr]
	if !ok || ptr == nil {
		return
	}
	delete(p.lent, ptr)
	p.free[k] = append(p.free[k], data)
}

// owns reports whether v's backing was lent by this pool (and is not shared with a view).
func (p *pool) owns(v G.Value) bool {
	d, ok := v.(*tensor.Dense)
	if !ok {
		return false
	}
	_, lent := p.lent[first(d.Data())]
	return lent
}

// forget gives up d's backing: another value (a view) may outlive d, so the collector, not
// the pool, decides when it is free.
func (p *pool) forget(d *tensor.Dense) { delete(p.lent, first(d.Data())) }

// first is the address of a slice's first element (nil for other values or empty slices).
func first(data any) unsafe.Pointer {
	switch d := data.(type) {
	case []float32:
		if len(d) > 0 {
			return unsafe.Pointer(&d[0])
		}
	case []float64:
		if len(d) > 0 {
			return unsafe.Pointer(&d[0])
		}
	}
	return nil
}
