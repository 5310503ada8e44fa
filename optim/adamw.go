package optim

import (
	"fmt"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
)

// AdamW is torch.optim.AdamW: decoupled weight decay, bias-corrected moments, eps added
// after the square root. Moments are float32 like PyTorch's for float32 parameters; the
// update is computed in float64.
type AdamW struct {
	Beta1, Beta2, Eps, WeightDecay float64
	Step                           int         // updates done
	M, V                           [][]float32 // first and second moments, one per parameter
}

// NewAdamW makes an optimizer for parameters of the given sizes.
func NewAdamW(sizes []int, beta1, beta2, eps, weightDecay float64) *AdamW {
	o := &AdamW{Beta1: beta1, Beta2: beta2, Eps: eps, WeightDecay: weightDecay}
	for _, n := range sizes {
		o.M = append(o.M, make([]float32, n))
		o.V = append(o.V, make([]float32, n))
	}
	return o
}

// Update applies one step at learning rate lr to params with grads (same order and sizes as
// at construction). A step at lr 0 still advances the moments and the step count, as in PyTorch.
func (o *AdamW) Update(params, grads [][]float32, lr float64) error {
	if len(params) != len(o.M) || len(grads) != len(o.M) {
		return fmt.Errorf("optim: %d parameters and %d gradients for an optimizer of %d", len(params), len(grads), len(o.M))
	}
	for i, p := range params {
		if len(p) != len(o.M[i]) || len(grads[i]) != len(o.M[i]) {
			return fmt.Errorf("optim: parameter %d has %d elements and gradient %d; the optimizer has %d", i, len(p), len(grads[i]), len(o.M[i]))
		}
	}
	o.Step++
	stepSize, decay, bc2 := o.Scalars(o.Step, lr)
	// element-wise: ranges of the parameters on all cores give the bits one loop gives
	type span struct{ i, lo, hi int }
	var spans []span
	for i, p := range params {
		for lo := 0; lo < len(p); lo += updateChunk {
			spans = append(spans, span{i, lo, min(len(p), lo+updateChunk)})
		}
	}
	parallel(len(spans), func(k int) {
		sp := spans[k]
		p, g, m, v := params[sp.i], grads[sp.i], o.M[sp.i], o.V[sp.i]
		for j := sp.lo; j < sp.hi; j++ {
			// each product rounded by itself (the conversions keep Go from fusing it with the
			// add where the target has FMA: GOAMD64=v3, arm64), as the device's adamw does
			gj := float64(g[j])
			mj := float64(m[j]) + float64((1-o.Beta1)*(gj-float64(m[j]))) // lerp, as torch
			vj := float64(o.Beta2*float64(v[j])) + float64(float64((1-o.Beta2)*gj)*gj)
			m[j], v[j] = float32(mj), float32(vj)
			pj := float64(p[j]) * decay
			p[j] = float32(pj - stepSize*float64(m[j])/(math.Sqrt(float64(v[j]))/bc2+o.Eps))
		}
	})
	return nil
}

// updateChunk is how many elements of a parameter one goroutine updates at a time.
const updateChunk = 1 << 15

// parallel runs fn(k) for k in [0, n) on up to GOMAXPROCS goroutines.
func parallel(n int, fn func(k int)) {
	workers := min(runtime.GOMAXPROCS(0), n)
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := int(next.Add(1) - 1); k < n; k = int(next.Add(1) - 1) {
				fn(k)
			}
		}()
	}
	wg.Wait()
}

// Scalars are the factors that every element of update number step (1 for the first) at
// learning rate lr shares: stepSize = lr / (1 - beta1^step), decay = 1 - lr weightDecay and
// bc2 = sqrt(1 - beta2^step).
func (o *AdamW) Scalars(step int, lr float64) (stepSize, decay, bc2 float64) {
	bc1 := 1 - math.Pow(o.Beta1, float64(step))
	return lr / bc1, 1 - lr*o.WeightDecay, math.Sqrt(1 - math.Pow(o.Beta2, float64(step)))
}

// ClipGradNorm scales grads so their global L2 norm is at most maxNorm, as
// torch.nn.utils.clip_grad_norm_ (factor maxNorm / (norm + 1e-6), capped at 1). It returns the
// norm before clipping. maxNorm <= 0 only measures.
func ClipGradNorm(grads [][]float32, maxNorm float64) float64 {
	var ss float64
	for _, g := range grads {
		for _, x := range g {
			ss += float64(x) * float64(x)
		}
	}
	norm := math.Sqrt(ss)
	if maxNorm <= 0 {
		return norm
	}
	if coef := ClipCoef(norm, maxNorm); coef < 1 {
		for _, g := range grads {
			for j := range g {
				g[j] = float32(float64(g[j]) * coef)
			}
		}
	}
	return norm
}

// ClipCoef is the factor ClipGradNorm scales gradients of global norm norm by (1: none).
func ClipCoef(norm, maxNorm float64) float64 { return min(maxNorm/(norm+1e-6), 1) }
