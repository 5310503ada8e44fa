//go:build cudaemu && !qtcuda

package cuda

import "unsafe"

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

// FailCopiesToDevice makes every host-to-device copy fail until restore is called.
func (d *Device) FailCopiesToDevice() (restore func()) {
	prev := d.drv
	d.drv = &refusedCopies{prev}
	return func() { d.drv = prev }
}

// refusedCopies is a driver whose host-to-device copies fail.
type refusedCopies struct{ driver }

func (refusedCopies) memcpyHtoD(devPtr, unsafe.Pointer, int64) error {
	return &emuError{"CUDA_ERROR_INVALID_VALUE", "host-to-device copy refused"}
}

// FailCopiesToHostAsync makes every asynchronous device-to-host copy (the copy stream's,
// which saves a ParamSet's state after an update) fail until restore is called.
func (d *Device) FailCopiesToHostAsync() (restore func()) {
	prev := d.drv
	d.drv = &refusedAsyncCopies{prev}
	return func() { d.drv = prev }
}

// refusedAsyncCopies is a driver whose asynchronous device-to-host copies fail.
type refusedAsyncCopies struct{ driver }

func (refusedAsyncCopies) memcpyDtoHAsync(unsafe.Pointer, devPtr, int64) error {
	return &emuError{"CUDA_ERROR_INVALID_VALUE", "device-to-host copy refused"}
}
