package threatq_test

import (
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tqtriage/tqtriage/threatq/threatqsim"
)

// genIndicator makes the i-th indicator of a generated collection; its
// value encodes i so that the reader can tell which one it got.
func genIndicator(i int) (typ, value string) {
	switch i % 4 {
	case 0:
		return "MD5", fmt.Sprintf("%032x", i)
	case 1:
		return "SHA-256", fmt.Sprintf("%064x", i)
	case 2:
		return "URL", "https://example.com/i/" + strconv.Itoa(i)
	default:
		return "FQDN", "h" + strconv.Itoa(i) + ".example.com"
	}
}

// indexOf decodes genIndicator's index back from type and value.
func indexOf(typ, value string) (int, error) {
	var s string
	base := 10
	switch typ {
	case "MD5", "SHA-256":
		s, base = value, 16
	case "URL":
		s = strings.TrimPrefix(value, "https://example.com/i/")
	case "FQDN":
		s = strings.TrimSuffix(strings.TrimPrefix(value, "h"), ".example.com")
	}
	n, err := strconv.ParseInt(s, base, 64)
	return int(n), err
}

func heapAfterGC() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// TestLargeCollectionStreamsInBoundedMemory reads 200,000 indicators and
// checks that the heap stays near where it started: the client holds one
// page, never the collection.
func TestLargeCollectionStreamsInBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("reads 200,000 indicators")
	}
	const n = 200_000
	const bound = 64 << 20
	sim, url := startSim(t, threatqsim.Options{})
	first := sim.AddGeneratedCollection("big", "Two hundred thousand", n, genIndicator)
	c := newClient(t, url, nil)

	seen := make([]uint64, (n+63)/64) // a bit per index: 25 KB, not a map of values
	base := heapAfterGC()
	var peak, rawPeak uint64
	count, dups := 0, 0
	start := time.Now()
	for in, err := range c.CollectionIndicators(t.Context(), "big", 500) {
		if err != nil {
			t.Fatalf("after %d: %v", count, err)
		}
		i, perr := indexOf(in.Type, in.Value)
		if perr != nil || i < 0 || i >= n {
			t.Fatalf("indicator %+v is not one of the collection's", in)
		}
		if in.ID != first+int64(i) {
			t.Fatalf("indicator %d has id %d, want %d", i, in.ID, first+int64(i))
		}
		if seen[i/64]&(1<<(i%64)) != 0 {
			dups++
		}
		seen[i/64] |= 1 << (i % 64)
		count++
		switch {
		case count%20_000 == 0:
			peak = max(peak, heapAfterGC())
		case count%500 == 250:
			// Mid-page, garbage included: what the process really holds.
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			rawPeak = max(rawPeak, m.HeapAlloc)
		}
	}
	elapsed := time.Since(start)
	if count != n || dups != 0 {
		t.Fatalf("read %d indicators with %d duplicates, want exactly %d distinct", count, dups, n)
	}
	growth := int64(peak) - int64(base)
	t.Logf("read %d indicators in %v (%d pages); heap baseline %.1f MiB, live peak %.1f MiB (growth %+.1f MiB), peak with garbage %.1f MiB",
		count, elapsed.Round(time.Millisecond), sim.Counts().CollectionPages,
		float64(base)/(1<<20), float64(peak)/(1<<20), float64(growth)/(1<<20), float64(rawPeak)/(1<<20))
	if growth > bound {
		t.Fatalf("heap grew by %d bytes while streaming, bound %d", growth, bound)
	}
	if rawGrowth := int64(rawPeak) - int64(base); rawGrowth > bound {
		t.Fatalf("heap, garbage included, grew by %d bytes while streaming, bound %d", rawGrowth, bound)
	}
}
