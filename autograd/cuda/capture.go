//go:build qtcuda || cudaemu

package cuda

// Capture on the GPU, and programs whose input is already on the device: GPTQ calibration
// (quantize/calibrate_cuda.go) runs one block's forward over hidden states kept on the device
// and sums the Hessian of a projection's input where the executor computed it.
//
//	x [N, K] -> y [N, K], y = x (a view: no copy); sink(x's device buffer) as the program runs

import (
	"fmt"

	"github.com/qwen-tune/qwen-tune/autograd"
	G "gorgonia.org/gorgonia"
)

// DeviceSink receives a captured float32 matrix x [rows, cols] (row-major, contiguous) on the
// GPU, in stream order with the program's launches; x is valid only during the call.
type DeviceSink func(x *Buffer, rows, cols int) error

// CaptureDevice is Capture for graphs that run on the GPU executor: sink gets the device
// buffer. On the CPU such a graph fails.
func CaptureDevice(x *G.Node, sink DeviceSink) (*G.Node, error) {
	return autograd.CaptureFor(x, sink)
}

// capture makes n a view of its input (whose buffer then lives as long as n's readers) and
// hands the input to the device sink.
func (c *compiler) capture(n *G.Node, in []*value) (bool, error) {
	sink, ok := n.Op().(*autograd.CaptureOp).Device().(DeviceSink)
	if !ok {
		return false, fmt.Errorf("cuda: %s has a host sink and no GPU kernel (build it with CaptureDevice)", c.what())
	}
	x := in[0]
	if x.bf16 || x.lazy != 0 || x.stride != x.cols {
		return false, fmt.Errorf("cuda: %s of a bf16, deferred or strided input", c.what())
	}
	v := *x
	c.vals[n] = &v
	r := c.root(c.kids[n][0])
	c.rootOf[n] = r
	c.lastUse[r] = max(c.lastUse[r], c.lastUse[n])
	rows, cols := x.rows, x.cols
	c.p.graphable = false // the sink may copy to the host, which a CUDA graph cannot record
	c.emit(func() error { return sink(x.ptr(), rows, cols) })
	return true, nil
}

// CompileInput is Compile for a graph whose node in (a [rows, cols] float32 matrix without a
// value; [B, T, H, D] is read as [B*T, H*D]) reads buf on the device, in place.
func (d *Device) CompileInput(g *G.ExprGraph, out, in *G.Node, buf *Buffer, step *autograd.Step) (*Program, error) {
	return d.compileWith(g, out, nil, step, GradOptions{}, map[*G.Node]*Buffer{in: buf})
}

// Output is the program's output on the device after Run: float32 [rows, cols], contiguous.
// It is the program's buffer, overwritten by the next Run.
func (p *Program) Output() (buf *Buffer, rows, cols int, err error) {
	if p.out.stride != p.out.cols {
		return nil, 0, 0, fmt.Errorf("cuda: the program's output is strided")
	}
	return p.out.ptr(), p.out.rows, p.out.cols, nil
}

// CopyDevice copies bytes from src to dst on the device's stream.
func (d *Device) CopyDevice(dst, src *Buffer, bytes int64) error {
	if bytes > dst.Bytes || bytes > src.Bytes {
		return fmt.Errorf("cuda: copying %d bytes between buffers of %d and %d", bytes, src.Bytes, dst.Bytes)
	}
	return d.copyDtoD(dst.Ptr, src.Ptr, bytes)
}
