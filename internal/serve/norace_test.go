//go:build !race

package serve

// raceEnabled: the race detector multiplies memory, so memory bounds are not checked.
const raceEnabled = false
