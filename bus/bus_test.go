package bus

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

func startServer(t testing.TB) *server.Server {
	t.Helper()
	s, err := StartEmbedded(EmbeddedOptions{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

func connect(t testing.TB, s *server.Server) *Bus {
	t.Helper()
	b, err := Connect(context.Background(), Config{URL: s.ClientURL()}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

func TestTopologyIsIdempotent(t *testing.T) {
	s := startServer(t)
	connect(t, s)
	b := connect(t, s) // a second process creating the same topology
	st, err := b.ConsumerState(context.Background(), ConsumerWorkers)
	if err != nil {
		t.Fatal(err)
	}
	if st.MaxDeliver != -1 || st.AckWait != 30*time.Second {
		t.Fatalf("workers consumer state = %+v", st)
	}
}

// TestClaimIsExactAcrossProcesses has four connections (as four replicas)
// claim 300 distinct indicators of one run, each indicator several times
// (redeliveries), against a cap of 100: exactly 100 distinct are admitted,
// and every repeat of an admitted one is admitted again.
func TestClaimIsExactAcrossProcesses(t *testing.T) {
	s := startServer(t)
	const replicas, distinct, repeats, limit = 4, 300, 3, 100
	buses := make([]*Bus, replicas)
	for i := range buses {
		buses[i] = connect(t, s)
	}
	var admittedKeys sync.Map
	var admitted, skipped atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, replicas*distinct*repeats)
	for r := 0; r < replicas; r++ {
		for g := 0; g < 4; g++ {
			wg.Add(1)
			go func(b *Bus, offset int) {
				defer wg.Done()
				for i := 0; i < distinct*repeats; i++ {
					if (i+offset)%(replicas*4) != 0 {
						continue
					}
					key := ClaimKey("MD5", fmt.Sprintf("value-%d", i%distinct))
					a, err := b.Claim(context.Background(), "run-exact", key, limit)
					if err != nil {
						errs <- err
						return
					}
					if a.Admitted {
						admitted.Add(1)
						if prev, loaded := admittedKeys.LoadOrStore(key, a.Slot); loaded && prev.(int) != a.Slot {
							errs <- fmt.Errorf("key %s admitted in slots %d and %d", key, prev, a.Slot)
						}
					} else {
						skipped.Add(1)
						if _, ok := admittedKeys.Load(key); ok {
							errs <- fmt.Errorf("key %s admitted once, then skipped", key)
						}
					}
				}
			}(buses[r], r*4+g)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	n := 0
	slots := map[int]bool{}
	admittedKeys.Range(func(_, v any) bool { n++; slots[v.(int)] = true; return true })
	if n != limit || len(slots) != limit {
		t.Fatalf("%d distinct indicators admitted in %d slots; want exactly %d", n, len(slots), limit)
	}
	if admitted.Load()+skipped.Load() != distinct*repeats {
		t.Fatalf("%d claims answered; want %d", admitted.Load()+skipped.Load(), distinct*repeats)
	}
}

func TestClaimRunsAreIndependent(t *testing.T) {
	b := connect(t, startServer(t))
	ctx := context.Background()
	for _, run := range []string{"run-a", "run-b"} {
		for i := 0; i < 3; i++ {
			a, err := b.Claim(ctx, run, ClaimKey("URL", fmt.Sprint(i)), 2)
			if err != nil {
				t.Fatal(err)
			}
			if want := i < 2; a.Admitted != want {
				t.Fatalf("%s claim %d admitted=%v; want %v", run, i, a.Admitted, want)
			}
		}
	}
}

// TestARepeatGivesItsReservedSlotBack: a key claimed again reserves a
// slot before its claim is found stored; the slot is taken off the count,
// which stays the number of distinct keys admitted.
func TestARepeatGivesItsReservedSlotBack(t *testing.T) {
	b := connect(t, startServer(t))
	ctx := context.Background()
	claim := func(v string) Admission {
		t.Helper()
		a, err := b.Claim(ctx, "run-repeat", ClaimKey("MD5", v), 3)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	if a := claim("a"); !a.Admitted || a.Again || a.Slot != 1 {
		t.Fatalf("a = %+v", a)
	}
	if a := claim("b"); !a.Admitted || a.Slot != 2 {
		t.Fatalf("b = %+v", a)
	}
	if a := claim("a"); !a.Admitted || !a.Again || a.Slot != 1 {
		t.Fatalf("a again = %+v; want admitted again in slot 1", a)
	}
	c, err := b.readCount(ctx, "run-repeat")
	if err != nil || c.count != 2 {
		t.Fatalf("count %+v, %v; want 2 after the repeat gave its slot back", c, err)
	}
	if a := claim("c"); !a.Admitted || a.Again {
		t.Fatalf("c = %+v; want the third of three admitted", a)
	}
	if a := claim("d"); a.Admitted {
		t.Fatalf("d = %+v; want refused at the limit of 3", a)
	}
	if a := claim("b"); !a.Admitted || !a.Again {
		t.Fatalf("b at the limit = %+v; want admitted again", a)
	}
}

// TestClaimAfterAWorkerDiedBetweenReservingAndMarking: a worker reserved a
// slot for a key, then died before storing its claim. The redelivered
// job's claim reserves again: admitted, and the run admits one fewer (the
// documented cost of a crash, never one more). A count of the earlier
// form ("slot key") reads the same.
func TestClaimAfterAWorkerDiedBetweenReservingAndMarking(t *testing.T) {
	for _, form := range []string{"now", "earlier"} {
		t.Run(form, func(t *testing.T) {
			b := connect(t, startServer(t))
			ctx := context.Background()
			run := "run-died-" + form
			key := ClaimKey("MD5", "died")
			if form == "now" {
				if stored, err := b.storeCount(ctx, run, 0, claimCount{count: 1, highest: 1}, []string{key}); err != nil || !stored {
					t.Fatal(err)
				}
			} else if _, err := b.js.Publish(ctx, countSubject(run), []byte("1 "+key)); err != nil {
				t.Fatal(err)
			}
			a, err := b.Claim(ctx, run, key, 3)
			if err != nil || !a.Admitted || a.Again || a.Slot != 2 {
				t.Fatalf("claim after the crash = %+v, %v; want admitted in slot 2", a, err)
			}
			other, err := b.Claim(ctx, run, ClaimKey("MD5", "other"), 3)
			if err != nil || !other.Admitted || other.Slot != 3 {
				t.Fatalf("next key = %+v, %v; want admitted in slot 3", other, err)
			}
			third, err := b.Claim(ctx, run, ClaimKey("MD5", "third"), 3)
			if err != nil || third.Admitted {
				t.Fatalf("third key = %+v, %v; want refused: the crashed reservation holds a slot", third, err)
			}
		})
	}
}

// TestNoLimitsLeavesTheStreamsUnbounded: the embedded server of run and
// demo reserves no storage.
func TestNoLimitsLeavesTheStreamsUnbounded(t *testing.T) {
	s := startServer(t)
	b, err := Connect(context.Background(), Config{URL: s.ClientURL(), Limits: NoLimits}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for _, st := range []jetstream.Stream{b.jobs, b.results, b.dlq, b.claims} {
		if c := st.CachedInfo().Config; c.MaxBytes != -1 {
			t.Errorf("%s: max bytes %d; want none", c.Name, c.MaxBytes)
		}
	}
	if c := b.jobs.CachedInfo().Config; c.MaxMsgs != -1 || c.MaxMsgSize != 64<<10 {
		t.Errorf("jobs: max msgs %d, max size %d; want no count limit and the job size limit", c.MaxMsgs, c.MaxMsgSize)
	}
}
