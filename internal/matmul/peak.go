package matmul

import (
	"sync"
	"time"
)

// FMAPeak measures the float32 multiply-add throughput of threads goroutines running at once
// (independent accumulators on the widest vectors, the upper bound of any matrix product), in
// GFLOP/s, the best of five runs of about 20 ms. It is 0 where there is no vector loop (the
// pure-Go path).
func FMAPeak(threads int) float64 {
	const rounds = 1 << 16
	if fmaLoop(1) == 0 {
		return 0
	}
	best := 0.0
	for try := 0; try < 5; try++ {
		var wg sync.WaitGroup
		flops := make([]float64, threads)
		start := time.Now()
		for t := 0; t < threads; t++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Since(start) < 20*time.Millisecond {
					flops[t] += fmaLoop(rounds)
				}
			}()
		}
		wg.Wait()
		sec := time.Since(start).Seconds()
		total := 0.0
		for _, f := range flops {
			total += f
		}
		best = max(best, total/sec/1e9)
	}
	return best
}
