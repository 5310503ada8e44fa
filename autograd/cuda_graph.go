//go:build qtcuda

package autograd

// CUDA graphs for the one-token decode step: its launches are captured once from the
// device's stream and replayed with one cuGraphLaunch per token. The kernels read the
// position from device memory, so a replay serves every step until the cache is reallocated.

/*
#cgo LDFLAGS: -lcuda
#include <cuda.h>
#include <stdint.h>

static int qt_begin_capture(uintptr_t s) {
	return cuStreamBeginCapture((CUstream)s, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL);
}
static int qt_end_capture(uintptr_t s, uintptr_t* graph) {
	CUgraph g = 0;
	int rc = cuStreamEndCapture((CUstream)s, &g);
	*graph = (uintptr_t)g;
	return rc;
}
static int qt_instantiate(uintptr_t graph, uintptr_t* exec) {
	CUgraphExec e = 0;
	int rc = cuGraphInstantiateWithFlags(&e, (CUgraph)graph, 0);
	*exec = (uintptr_t)e;
	return rc;
}
static int qt_graph_launch(uintptr_t exec, uintptr_t s) { return cuGraphLaunch((CUgraphExec)exec, (CUstream)s); }
static void qt_graph_destroy(uintptr_t graph, uintptr_t exec) {
	if (exec) cuGraphExecDestroy((CUgraphExec)exec);
	if (graph) cuGraphDestroy((CUgraph)graph);
}
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// rawStream is the CUstream inside d.stream (gorgonia.org/cu's Stream holds only it).
func (d *Device) rawStream() C.uintptr_t {
	return C.uintptr_t(*(*uintptr)(unsafe.Pointer(&d.stream)))
}

type cudaGraph struct {
	graph, exec C.uintptr_t
}

func graphErr(call string, rc C.int) error {
	if rc == 0 {
		return nil
	}
	return fmt.Errorf("autograd: %s: CUDA error %d", call, int(rc))
}

// capture records the launches run makes on the device's stream as a graph.
func (d *Device) capture(run func() error) (*cudaGraph, error) {
	s := d.rawStream()
	if err := graphErr("cuStreamBeginCapture", C.qt_begin_capture(s)); err != nil {
		return nil, err
	}
	runErr := run()
	g := &cudaGraph{}
	endErr := graphErr("cuStreamEndCapture", C.qt_end_capture(s, &g.graph))
	if runErr != nil || endErr != nil {
		g.destroy()
		if runErr != nil {
			return nil, runErr
		}
		return nil, endErr
	}
	if err := graphErr("cuGraphInstantiateWithFlags", C.qt_instantiate(g.graph, &g.exec)); err != nil {
		g.destroy()
		return nil, err
	}
	return g, nil
}

func (d *Device) launchGraph(g *cudaGraph) error {
	return graphErr("cuGraphLaunch", C.qt_graph_launch(g.exec, d.rawStream()))
}

func (g *cudaGraph) destroy() {
	if g != nil {
		C.qt_graph_destroy(g.graph, g.exec)
		g.graph, g.exec = 0, 0
	}
}
