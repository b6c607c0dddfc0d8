package bus

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
)

// BenchmarkClaim measures admissions a second into one run from 16
// goroutines of one process, the worker's default concurrency.
func BenchmarkClaim(b *testing.B)       { benchClaim(b, 8) }
func BenchmarkClaimSerial(b *testing.B) { benchClaim(b, 0) }
func benchClaim(b *testing.B, par int) {
	bs := connect(b, startServer(b))
	var n atomic.Int64
	if par > 0 {
		b.SetParallelism(par)
	} // 2 cores × 8 = 16 goroutines
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			if _, err := bs.Claim(context.Background(), "bench", ClaimKey("MD5", fmt.Sprint(i)), 1<<30); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "claims/s")
}
