//go:build qtcuda || cudaemu

package cuda

// CUDA graphs for the one-token decode step: its launches are captured once from the
// device's stream and replayed with one cuGraphLaunch per token. The kernels read the
// position from device memory, so a replay serves every step until the cache is reallocated.

import (
	"fmt"
)

type cudaGraph struct {
	drv   driver
	graph devGraph
	exec  devGraphExec
}

func graphErr(call string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("cuda: %s: %v", call, err)
}

// capture records the launches run makes on the device's stream as a graph.
func (d *Device) capture(run func() error) (*cudaGraph, error) {
	if err := graphErr("cuStreamBeginCapture", d.drv.beginCapture()); err != nil {
		return nil, err
	}
	runErr := run()
	g := &cudaGraph{drv: d.drv}
	var rc error
	g.graph, rc = d.drv.endCapture()
	endErr := graphErr("cuStreamEndCapture", rc)
	if runErr != nil || endErr != nil {
		g.destroy()
		if runErr != nil {
			return nil, runErr
		}
		return nil, endErr
	}
	g.exec, rc = d.drv.instantiate(g.graph)
	if err := graphErr("cuGraphInstantiateWithFlags", rc); err != nil {
		g.destroy()
		return nil, err
	}
	return g, nil
}

func (d *Device) launchGraph(g *cudaGraph) error {
	return graphErr("cuGraphLaunch", d.drv.graphLaunch(g.exec))
}

func (g *cudaGraph) destroy() {
	if g != nil {
		g.drv.graphDestroy(g.graph, g.exec)
		g.graph, g.exec = 0, 0
	}
}
