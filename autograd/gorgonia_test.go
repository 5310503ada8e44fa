package autograd

import (
	"math"
	"testing"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// TestGorgoniaSymbolicGradient guards the dependency pins: gorgonia must start on this Go
// version and its Grad + TapeMachine path must give exact gradients for
// loss = sum((x W) * (x W)), d loss / d W = 2 x^T (x W).
func TestGorgoniaSymbolicGradient(t *testing.T) {
	g := G.NewGraph()
	xv := []float64{1, 2, 3, 4, 5, 6}       // [2, 3]
	wv := []float64{0.5, -1, 2, 0.25, 1, 3} // [3, 2]
	x := G.NewMatrix(g, tensor.Float64, G.WithShape(2, 3), G.WithName("x"), G.WithValue(tensor.New(tensor.WithShape(2, 3), tensor.WithBacking(append([]float64(nil), xv...)))))
	w := G.NewMatrix(g, tensor.Float64, G.WithShape(3, 2), G.WithName("w"), G.WithValue(tensor.New(tensor.WithShape(3, 2), tensor.WithBacking(append([]float64(nil), wv...)))))
	y := G.Must(G.Mul(x, w))
	loss := G.Must(G.Sum(G.Must(G.HadamardProd(y, y))))
	if _, err := G.Grad(loss, w); err != nil {
		t.Fatal(err)
	}
	vm := G.NewTapeMachine(g)
	defer vm.Close()
	if err := vm.RunAll(); err != nil {
		t.Fatal(err)
	}
	gw, err := w.Grad()
	if err != nil {
		t.Fatal(err)
	}
	got := gw.Data().([]float64)
	// Reference: y = x w, dW = 2 x^T y.
	var yv [2][2]float64
	for i := 0; i < 2; i++ {
		for j := 0; j < 2; j++ {
			for k := 0; k < 3; k++ {
				yv[i][j] += xv[i*3+k] * wv[k*2+j]
			}
		}
	}
	for k := 0; k < 3; k++ {
		for j := 0; j < 2; j++ {
			want := 0.0
			for i := 0; i < 2; i++ {
				want += 2 * xv[i*3+k] * yv[i][j]
			}
			if math.Abs(got[k*2+j]-want) > 1e-12 { // measured 0
				t.Errorf("dW[%d,%d] = %g, want %g", k, j, got[k*2+j], want)
			}
		}
	}
}
