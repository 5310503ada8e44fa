//go:build cudaemu && !qtcuda

package autograd

// FailLaunches makes the launches of the kernel name that follow a launch of the kernel
// after (any launch of name when after is "") fail, as a faulting kernel's would
// (CUDA_ERROR_LAUNCH_FAILED), until restore is called: what a failed launch leaves behind
// can then be checked on the emulator from the packages that drive the device.
func (d *Device) FailLaunches(name, after string) (restore func()) {
	prev := d.drv
	d.drv = &refusedLaunches{driver: prev, name: name, after: after, armed: after == ""}
	return func() { d.drv = prev }
}

// refusedLaunches is a driver whose launches of one kernel fail once armed.
type refusedLaunches struct {
	driver
	name, after string
	armed       bool
}

func (r *refusedLaunches) launch(fn devFunction, grid, block, shared int, params []uint64) error {
	if r.armed && fn == r.name {
		return &emuError{"CUDA_ERROR_LAUNCH_FAILED", "launch of " + fn + " refused"}
	}
	r.armed = r.armed || fn == r.after
	return r.driver.launch(fn, grid, block, shared, params)
}
