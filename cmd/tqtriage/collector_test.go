package main

import (
	"os"
	"runtime/debug"
	"testing"
)

// A worker or write-back replica runs the collector at replicaGOGC unless
// GOGC is set; a GOGC that is set is left to the runtime, which read it.
func TestReplicasTuneTheCollectorUnlessGOGCIsSet(t *testing.T) {
	was := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(was) })

	t.Setenv("GOGC", "") // restored after the test
	os.Unsetenv("GOGC")
	if gogc, ours := tuneCollector(); !ours || gogc != replicaGOGC {
		t.Fatalf("GOGC unset: %d, ours %v; want %d, ours", gogc, ours, replicaGOGC)
	}
	if now := debug.SetGCPercent(100); now != replicaGOGC {
		t.Fatalf("the collector runs at %d; want %d", now, replicaGOGC)
	}

	t.Setenv("GOGC", "150")
	if gogc, ours := tuneCollector(); ours || gogc != 150 {
		t.Fatalf("GOGC=150: %d, ours %v; want 150, left to the runtime", gogc, ours)
	}
	if now := debug.SetGCPercent(100); now != 100 {
		t.Fatalf("GOGC set: the collector was changed to %d", now)
	}
}
