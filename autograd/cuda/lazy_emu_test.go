//go:build cudaemu && !qtcuda

package cuda

import (
	"errors"
	"testing"
)

// failingLoads fails the next loadModule calls (as cuModuleLoadData may: out of memory,
// inside a stream capture), then passes them on.
type failingLoads struct {
	driver
	fail int
}

func (f *failingLoads) loadModule(ptx string) (devModule, error) {
	if f.fail > 0 {
		f.fail--
		var none devModule
		return none, errors.New("injected: out of memory")
	}
	return f.driver.loadModule(ptx)
}

// TestLazyModuleLoadRetried: a lazy module whose first load fails is loaded on the next
// request, with every kernel of it, instead of its kernels being reported missing.
func TestLazyModuleLoadRetried(t *testing.T) {
	d := openEmulated(t)
	real := d.drv
	d.drv = &failingLoads{driver: real, fail: 1}
	defer func() { d.drv = real }()
	if _, err := d.function("gemv_int4"); err == nil {
		t.Fatal("the injected failure did not show")
	}
	if _, ok := d.fns["dequant_int4_bf16"]; ok {
		t.Error("a failed load registered a kernel of the module")
	}
	for _, name := range []string{"gemv_int4", "dequant_int4_bf16"} {
		if _, err := d.function(name); err != nil {
			t.Errorf("%s once the driver works again: %v", name, err)
		}
	}
	if _, lazy := d.lazy["bias_f32"]; lazy {
		t.Error("bias_f32 is still waiting for its module, which is loaded")
	}
}
