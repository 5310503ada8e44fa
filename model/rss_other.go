//go:build !linux

package model

// PeakRSS is the process's peak resident set size in bytes (0 where unknown).
func PeakRSS() int64 { return 0 }
