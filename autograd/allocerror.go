package autograd

import "fmt"

// AllocError is a device allocation that failed: what it was for, its size, and the device's
// free and total memory then.
type AllocError struct {
	What, Device       string
	Bytes, Free, Total int64
	Err                error
}

func (e *AllocError) Error() string {
	return fmt.Sprintf("autograd: allocating %s (%.1f MiB) on %s: %v; %.1f of %.1f GiB free", e.What, float64(e.Bytes)/(1<<20), e.Device, e.Err,
		float64(e.Free)/(1<<30), float64(e.Total)/(1<<30))
}

func (e *AllocError) Unwrap() error { return e.Err }
