package triage_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tqtriage/tqtriage/triage"
	"github.com/tqtriage/tqtriage/triage/triagesim"
)

// BenchmarkCreateIndicator is the client and the simulator together over
// loopback HTTP, as a worker pool drives them: creates in parallel, each of
// a new value. ops/s is the throughput of the pair on this machine.
func BenchmarkCreateIndicator(b *testing.B) {
	sim := triagesim.New(triagesim.Options{})
	srv := httptest.NewServer(sim)
	defer srv.Close()
	c, err := triage.New(context.Background(), triage.Config{BaseURL: srv.URL,
		ClientID: triagesim.DefaultClientID, ClientSecret: triagesim.DefaultClientSecret})
	if err != nil {
		b.Fatal(err)
	}
	if err := c.Ping(context.Background()); err != nil { // the token, outside the timing
		b.Fatal(err)
	}
	var n atomic.Int64
	b.SetParallelism(8) // 8 × GOMAXPROCS callers, like a worker's concurrency
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			v := fmt.Sprintf("%064x", n.Add(1))
			if _, err := c.CreateIndicator(ctx, triage.NewIndicator{ThreatLevel: "Malicious", ThreatType: "SHA256", ThreatValue: v, ThreatSource: "bench"}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "ops/s")
}

// BenchmarkFindIndicator looks indicators up by type and value in a store
// of 100,000: the index, not a scan, must answer.
func BenchmarkFindIndicator(b *testing.B) {
	sim := triagesim.New(triagesim.Options{})
	seed := make([]triagesim.Indicator, 100_000)
	for i := range seed {
		seed[i] = triagesim.Indicator{ThreatLevel: "Benign", ThreatType: "SHA256", ThreatValue: fmt.Sprintf("%064x", i)}
	}
	if _, err := sim.Seed(seed...); err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(sim)
	defer srv.Close()
	c, err := triage.New(context.Background(), triage.Config{BaseURL: srv.URL,
		ClientID: triagesim.DefaultClientID, ClientSecret: triagesim.DefaultClientSecret})
	if err != nil {
		b.Fatal(err)
	}
	var n atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			v := fmt.Sprintf("%064x", n.Add(1)%int64(len(seed)))
			if _, err := c.FindIndicator(ctx, "SHA256", v, ""); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "ops/s")
}
