//go:build cudaemu && !qtcuda

package quantize

import (
	"math/rand/v2"
	"testing"
)

// TestGPTQDeviceCombinations: the device solve on the CPU's Hessian in the settings
// TestGPTQDeviceMatchesCPU leaves out (act-order with one group a row, static groups alone,
// groups wider than a block, act-order with groups across blocks at 2 bits asymmetric, 8 bits
// with static groups and act-order, rows and columns off the kernels' tiles), each with two
// dead inputs: every code and grid the CPU's.
func TestGPTQDeviceCombinations(t *testing.T) {
	d := openDevice(t)
	cases := []struct {
		name string
		n, k int
		o    func(*Options)
	}{
		{"act-order, one group per row", 48, 192, func(o *Options) { o.GroupSize, o.DescAct = -1, true }},
		{"static groups", 64, 256, func(o *Options) { o.StaticGroups, o.GroupSize = true, 64 }},
		{"group 256, block 64", 32, 512, func(o *Options) { o.GroupSize, o.BlockSize = 256, 64 }},
		{"act-order, group 32, block 96, asymmetric, 2 bits", 32, 192, func(o *Options) { o.DescAct, o.GroupSize, o.BlockSize, o.Sym, o.Bits = true, 32, 96, false, 2 }},
		{"8 bits, static groups, act-order", 40, 200, func(o *Options) { o.Bits, o.StaticGroups, o.DescAct, o.GroupSize = 8, true, true, 40 }},
		{"200 rows, 136 columns, act-order, group 8", 200, 136, func(o *Options) { o.GroupSize, o.DescAct = 8, true }},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(i), 9))
			o := DefaultOptions()
			c.o(&o)
			w := make([]float32, c.n*c.k)
			for j := range w {
				w[j] = float32(0.02 * rng.NormFloat64())
			}
			h := NewHessian(c.k)
			x := calibrationRows(rng, 3*c.k, c.k)
			for b := 0; b < 3; b++ {
				if err := h.Add(x[b*c.k*c.k:(b+1)*c.k*c.k], c.k); err != nil {
					t.Fatal(err)
				}
			}
			cpu, err := GPTQ(w, c.n, c.k, h, o)
			if err != nil {
				t.Fatal(err)
			}
			dh, err := UploadHessian(d, h)
			if err != nil {
				t.Fatal(err)
			}
			defer dh.Free()
			dev, err := GPTQDevice(w, c.n, c.k, dh, o)
			if err != nil {
				t.Fatal(err)
			}
			cmp := compareResults(t, cpu, dev, o.Bits)
			t.Logf("%d of %d codes differ (in %d rows), %d qweight words; %d scales differ, by up to %.2g", cmp.codes, len(cpu.Codes), cmp.rows, cmp.words, cmp.scales, cmp.scale)
			// measured: no code and no scale differs (as TestGPTQDeviceMatchesCPU)
			if cmp.codes > len(cpu.Codes)/1000 || cmp.scale > 1e-6 {
				t.Errorf("%d codes differ, %d scales by up to %.2g", cmp.codes, cmp.scales, cmp.scale)
			}
		})
	}
}

// TestGPTQDeviceChecksWeights: a weight slice of another size than [n, k] is an error on the
// device (its copy would otherwise start from whatever the device buffer held).
func TestGPTQDeviceChecksWeights(t *testing.T) {
	d := openDevice(t)
	const n, k = 8, 64
	rng := rand.New(rand.NewPCG(5, 6))
	h := NewHessian(k)
	if err := h.Add(calibrationRows(rng, 2*k, k), 2*k); err != nil {
		t.Fatal(err)
	}
	dh, err := UploadHessian(d, h)
	if err != nil {
		t.Fatal(err)
	}
	defer dh.Free()
	o := DefaultOptions()
	o.GroupSize = 32
	for _, size := range []int{n*k - 1, n*k + 1} {
		if _, err := GPTQDevice(make([]float32, size), n, k, dh, o); err == nil {
			t.Errorf("%d weights for [%d, %d] were quantized", size, n, k)
		}
	}
}
