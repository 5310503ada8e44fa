//go:build qtcuda

// Package cudaprobe checks for a usable NVIDIA driver and GPU when a binary built with
// -tags qtcuda starts. gorgonia.org/cu initialises the driver in its package init and exits
// with a terse message when that fails; this package is initialised first (package
// initialisation follows import paths in order, and it does not import gorgonia.org/cu) and
// explains instead: such a binary needs a GPU, and the default build runs on the CPU.
package cudaprobe

/*
#cgo LDFLAGS: -lcuda
#include <cuda.h>
*/
import "C"

import (
	"fmt"
	"os"
)

func init() {
	if rc := C.cuInit(0); rc != C.CUDA_SUCCESS {
		fail(fmt.Sprintf("cuInit failed with CUDA error %d", int(rc)))
	}
	var n C.int
	if rc := C.cuDeviceGetCount(&n); rc != C.CUDA_SUCCESS || n == 0 {
		fail("no CUDA device is visible")
	}
}

func fail(why string) {
	fmt.Fprintf(os.Stderr, "qwen-tune: %s. This binary was built with -tags qtcuda and needs an NVIDIA GPU and driver; on a machine without one use the default build (go build ./cmd/qwen-tune), which runs on the CPU.\n", why)
	os.Exit(3)
}
