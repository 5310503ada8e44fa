package autograd

import (
	"fmt"
	"hash"
	"hash/fnv"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/chewxy/hm"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// Float is the element type an op computes in: float32 for the model, float64 for the
// finite-difference gradient checks.
type Float interface{ float32 | float64 }

// opIDs numbers op instances. Every node of this package gets its own op instance with its own
// hash, so gorgonia never merges two nodes that read different runtime state (see Step).
var opIDs atomic.Uint64

// base is the part of gorgonia.Op every op here shares.
type base struct {
	name string
	id   uint64
	pool *pool // set when a Machine runs the op
	// inPlace is set by a Machine for the run it is about to make when the op may write its
	// result over the input it names in overwrites (that input dies here).
	inPlace bool
}

func (b *base) usePool(p *pool)      { b.pool = p }
func (b *base) allowInPlace(ok bool) { b.inPlace = ok }

// overwriter is an op that can write its result over one of its inputs (overwrites: its
// index, or -1), told by allowInPlace whether it may this time.
type overwriter interface {
	overwrites() int
	allowInPlace(bool)
}

// result is a zeroed output tensor of type dt, from the running Machine's pool if any.
func (b *base) result(dt tensor.Dtype, shape ...int) *tensor.Dense { return b.pool.get(dt, shape...) }

func newBase(name string) base { return base{name: name, id: opIDs.Add(1)} }

func (o base) ReturnsPtr() bool      { return false }
func (o base) CallsExtern() bool     { return false }
func (o base) OverwritesInput() int  { return -1 }
func (o base) String() string        { return o.name }
func (o base) WriteHash(h hash.Hash) { fmt.Fprintf(h, "qwen-tune/%s#%d", o.name, o.id) }
func (o base) Hashcode() uint32 {
	h := fnv.New32a()
	o.WriteHash(h)
	return h.Sum32()
}

// Type variables. gorgonia's type inference names the result 'b', so these avoid it.
var (
	tvA = hm.TypeVariable('a') // activation element type
	tvW = hm.TypeVariable('w') // weight element type (float32, float64 or uint16 bf16)
	tvV = hm.TypeVariable('v') // a second weight type (a bias stored unlike its weight)
)

func tt(dims int, of hm.Type) *G.TensorType { return &G.TensorType{Dims: dims, Of: of} }

// dense is an op input as a tensor.
func dense(v G.Value, what string) (*tensor.Dense, error) {
	d, ok := v.(*tensor.Dense)
	if !ok {
		return nil, fmt.Errorf("autograd: %s: expected a dense tensor, got %T", what, v)
	}
	if d.IsMaterializable() {
		if m, ok := d.Materialize().(*tensor.Dense); ok {
			return m, nil
		}
	}
	return d, nil
}

// Scalar is a gorgonia scalar value (the gradient seed of a loss) as float64.
func Scalar(v G.Value) (float64, error) {
	switch s := v.(type) {
	case *G.F32:
		return float64(*s), nil
	case *G.F64:
		return float64(*s), nil
	case *tensor.Dense:
		if s.Size() == 1 {
			switch d := s.Data().(type) {
			case float32:
				return float64(d), nil
			case float64:
				return d, nil
			case []float32:
				return float64(d[0]), nil
			case []float64:
				return d[0], nil
			}
		}
	}
	return 0, fmt.Errorf("autograd: expected a scalar, got %T", v)
}

// newLike allocates a zeroed tensor of x's element type.
func newLike(x *tensor.Dense, shape ...int) *tensor.Dense {
	return tensor.New(tensor.Of(x.Dtype()), tensor.WithShape(shape...))
}

func shapeOf(in G.DimSizer) (tensor.Shape, error) {
	s, ok := in.(tensor.Shape)
	if !ok {
		return nil, fmt.Errorf("autograd: input shape is %T, not a tensor.Shape", in)
	}
	return s, nil
}

// twoShapes unpacks the shapes of an op's first two inputs.
func twoShapes(in []G.DimSizer) (tensor.Shape, tensor.Shape, error) {
	a, err := shapeOf(in[0])
	if err != nil {
		return nil, nil, err
	}
	b, err := shapeOf(in[1])
	return a, b, err
}

// wantDims checks an input's rank at graph-building time.
func wantDims(op string, s tensor.Shape, dims int, what string) error {
	if len(s) != dims {
		return fmt.Errorf("autograd: %s: %s must have %d dimensions, got shape %v", op, what, dims, s)
	}
	return nil
}

// nested counts the parallel regions running: a matrix product started inside one runs on
// its caller's goroutine instead of splitting again.
var nested atomic.Int32

// threads is how many goroutines a matrix product may use here.
func threads() int {
	if nested.Load() > 0 {
		return 1
	}
	return runtime.GOMAXPROCS(0)
}

// chunk is how many elements an element-wise op hands a goroutine at a time.
const chunk = 1 << 14

// parallelRange runs fn(lo, hi) over [0, n) cut into ranges of chunk elements, on up to
// GOMAXPROCS goroutines; the cut does not depend on the number of goroutines.
func parallelRange(n int, fn func(lo, hi int)) {
	parallel((n+chunk-1)/chunk, func(i int) { fn(i*chunk, min(n, (i+1)*chunk)) })
}

// parallel runs fn(i) for i in [0, n) on up to GOMAXPROCS goroutines.
func parallel(n int, fn func(i int)) {
	workers := min(runtime.GOMAXPROCS(0), n)
	if workers <= 1 {
		for i := 0; i < n; i++ {
			fn(i)
		}
		return
	}
	nested.Add(1)
	defer nested.Add(-1)
	var next atomic.Int64
	var wg sync.WaitGroup
	wg.Add(workers)
	for w := 0; w < workers; w++ {
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				fn(i)
			}
		}()
	}
	wg.Wait()
}
