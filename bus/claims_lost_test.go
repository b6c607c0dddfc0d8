package bus

import (
	"cmp"
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// A lost answer, as in a failover: the request reached the stream (or
// not, or later), and its publisher heard nothing.
type loss int

const (
	delivered   loss = iota // as asked
	lostAfter               // stored, the answer lost
	lostBefore              // never reached the stream
	arrivesLate             // held back, reaches the stream when the fence is sent
	unanswered              // stored, and no answer ever comes (a leader that stopped)
)

func (l loss) String() string {
	return [...]string{"delivered", "stored, the answer lost", "never arrived", "arrives late", "stored, no answer ever"}[l]
}

// lossyJS is the bus's JetStream, with the answers of chosen publications
// lost on the way back: the stream and its rules are the real server's.
type lossyJS struct {
	jetstream.JetStream
	mu     sync.Mutex
	plan   func(subject string) loss // asked once per publication
	held   []*nats.Msg
	counts map[string]int // publications per kind of subject: n, k, f
}

func lossy(b *Bus, plan func(kind string, n int) loss) *lossyJS {
	l := &lossyJS{JetStream: b.js, counts: map[string]int{}}
	l.plan = func(subject string) loss {
		kind := subjectKind(subject)
		l.mu.Lock()
		l.counts[kind]++
		n := l.counts[kind]
		l.mu.Unlock()
		return plan(kind, n)
	}
	b.js = l
	return l
}

// subjectKind is "n" (a count), "k" (a claim) or "f" (a fence).
func subjectKind(subject string) string {
	switch {
	case strings.HasSuffix(subject, ".n"):
		return "n"
	case strings.Contains(subject, ".k."):
		return "k"
	case strings.Contains(subject, ".f."):
		return "f"
	}
	return subject
}

func (l *lossyJS) PublishMsg(ctx context.Context, m *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	how := l.plan(m.Subject)
	if subjectKind(m.Subject) == "f" {
		// The fence goes first; a count message held back follows it,
		// as a request buffered through a reconnection would.
		ack, err := l.JetStream.PublishMsg(ctx, m, opts...)
		l.mu.Lock()
		held := l.held
		l.held = nil
		l.mu.Unlock()
		for _, h := range held {
			if _, herr := l.JetStream.PublishMsg(ctx, h); herr == nil {
				return nil, fmt.Errorf("the late count message was stored after its fence")
			}
		}
		if err == nil && how == lostAfter {
			return nil, context.DeadlineExceeded
		}
		return ack, err
	}
	switch how {
	case lostAfter:
		if _, err := l.JetStream.PublishMsg(ctx, m, opts...); err != nil {
			return nil, err
		}
		return nil, context.DeadlineExceeded
	case lostBefore:
		return nil, nats.ErrDisconnected
	case arrivesLate:
		l.mu.Lock()
		l.held = append(l.held, m)
		l.mu.Unlock()
		return nil, context.DeadlineExceeded
	case unanswered:
		if _, err := l.JetStream.PublishMsg(ctx, m, opts...); err != nil {
			return nil, err
		}
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return l.JetStream.PublishMsg(ctx, m, opts...)
}

func (l *lossyJS) PublishMsgAsync(m *nats.Msg, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	switch how := l.plan(m.Subject); how {
	case lostAfter, unanswered:
		_, err := l.JetStream.PublishMsg(context.Background(), m)
		if err == nil && how == unanswered {
			return silent{}, nil
		}
		return unsent{cmp.Or(err, nats.ErrDisconnected)}, nil
	case lostBefore:
		// What an asynchronous publication hears when its connection
		// is lost.
		return unsent{nats.ErrDisconnected}, nil
	}
	return l.JetStream.PublishMsgAsync(m, opts...)
}

// silent is the future of a publication whose answer never comes.
type silent struct{}

func (silent) Ok() <-chan *jetstream.PubAck { return nil }
func (silent) Err() <-chan error            { return nil }
func (silent) Msg() *nats.Msg               { return nil }

// shortRequests has a request of a commit given up on after 200 ms, not
// 5 s, for the length of the test.
func shortRequests(t *testing.T) {
	was := claimRequestTimeout
	claimRequestTimeout = 200 * time.Millisecond
	t.Cleanup(func() { claimRequestTimeout = was })
}

// claimGroup claims keys of run at once, so that they go in one commit.
// A claim that fails is claimed again, as its redelivered job would be;
// how many were is returned beside the answers.
func claimGroup(t *testing.T, b *Bus, run string, keys []string, limit int) ([]Admission, int) {
	t.Helper()
	out := make([]Admission, len(keys))
	errs := make([]error, len(keys))
	var again atomic.Int64
	var wg sync.WaitGroup
	for i, k := range keys {
		wg.Go(func() {
			for try := 0; try < 3; try++ {
				if out[i], errs[i] = b.Claim(context.Background(), run, k, limit); errs[i] == nil {
					return
				}
				again.Add(1)
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("claim of key %d, three times: %v", i, err)
		}
	}
	return out, int(again.Load())
}

func keysOf(prefix string, n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = ClaimKey("MD5", fmt.Sprintf("%s-%d", prefix, i))
	}
	return keys
}

// checkExact checks that the keys were admitted in distinct slots, once
// each, that the run's count says so, and that one more key is refused:
// no slot was lost to an answer lost, none given twice.
func checkExact(t *testing.T, b *Bus, run string, got []Admission, limit int) {
	t.Helper()
	slots := map[int]bool{}
	for i, a := range got {
		if !a.Admitted || a.Again || a.Slot < 1 || a.Slot > limit || slots[a.Slot] {
			t.Errorf("key %d: %+v; want admitted, for the first time, in a slot of its own up to %d", i, a, limit)
		}
		slots[a.Slot] = true
	}
	c, err := b.readCount(context.Background(), run)
	if err != nil || c.count != len(got) {
		t.Errorf("count = %+v, %v; want %d", c, err, len(got))
	}
	if len(got) == limit {
		a, err := b.Claim(context.Background(), run, ClaimKey("MD5", "one more"), limit)
		if err != nil || a.Admitted {
			t.Errorf("one more key at the cap = %+v, %v; want refused", a, err)
		}
	}
}

// claimExactly claims limit keys of run in one group, checks them exact,
// and that none failed: the commit was to do.
func claimExactly(t *testing.T, b *Bus, run string, limit int, do string) {
	t.Helper()
	got, again := claimGroup(t, b, run, keysOf(run, limit), limit)
	checkExact(t, b, run, got, limit)
	if again > 0 {
		t.Errorf("%d claims failed and were claimed again; want the commit to %s", again, do)
	}
}

// Seen in the container tests: the jobs stream's leader was stopped during
// a run, and the run admitted fewer than its cap allowed. A reservation
// whose answer was lost failed its whole group; if it had been stored,
// its slots were used by nobody. Now its fate is found out (a fence of
// the same message id), and a late arrival cannot be stored after it.
func TestACountWhoseAnswerWasLostIsFoundOut(t *testing.T) {
	for _, tc := range []struct {
		name         string
		count, fence loss
	}{
		{"stored, the answer lost", lostAfter, delivered},
		{"never arrived", lostBefore, delivered},
		{"arrives after its fence", arrivesLate, delivered},
		{"stored, and the fence's answer lost too", lostAfter, lostAfter},
		{"never arrived, and the fence's answer lost", lostBefore, lostAfter},
		{"stored, no answer ever", unanswered, delivered},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := connect(t, startServer(t))
			shortRequests(t)
			l := lossy(b, func(kind string, n int) loss {
				switch {
				case kind == "n" && n == 1:
					return tc.count
				case kind == "f" && n == 1:
					return tc.fence
				}
				return delivered
			})
			claimExactly(t, b, "run-lost", 4, "find out what became of its count")
			l.mu.Lock()
			defer l.mu.Unlock()
			if l.counts["f"] == 0 {
				t.Errorf("no fence was stored: the lost answer was not found out")
			}
			if len(l.held) > 0 {
				t.Errorf("a held message was never sent")
			}
		})
	}
}

// A claim whose answer was lost is stored again: refused as present, it
// is recognised as this commit's own by its slot, admitted, and its slot
// is not taken back off the count.
func TestAClaimWhoseAnswerWasLostIsRecognisedByItsSlot(t *testing.T) {
	for _, how := range []loss{lostAfter, lostBefore, unanswered} {
		t.Run(fmt.Sprint(how), func(t *testing.T) {
			b := connect(t, startServer(t))
			shortRequests(t)
			lossy(b, func(kind string, n int) loss {
				if kind == "k" && n%2 == 1 && n < 8 {
					return how
				}
				return delivered
			})
			claimExactly(t, b, "run-lost-claims", 6, "store them again")
		})
	}
}

// A NATS server stopped and started again in the middle of claims, as
// its replicas go on claiming: the cap is kept exactly. A claim that
// fails is claimed again, as its redelivered job would be.
func TestClaimIsExactThroughAServerRestart(t *testing.T) {
	dir := t.TempDir()
	s, err := StartEmbedded(EmbeddedOptions{StoreDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	port := s.Addr().(*net.TCPAddr).Port
	var mu sync.Mutex
	current := s
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		current.Shutdown()
		current.WaitForShutdown()
	})
	const replicas, distinct, repeats, limit = 3, 900, 2, 600
	buses := make([]*Bus, replicas)
	for i := range buses {
		buses[i] = connect(t, s)
	}
	var admittedKeys sync.Map
	var answered, failures atomic.Int64
	restarted := make(chan struct{})
	go func() {
		defer close(restarted)
		for answered.Load() < distinct/3 {
			time.Sleep(time.Millisecond)
		}
		mu.Lock()
		defer mu.Unlock()
		current.Shutdown()
		current.WaitForShutdown()
		time.Sleep(500 * time.Millisecond)
		if current, err = StartEmbedded(EmbeddedOptions{StoreDir: dir, Port: port}); err != nil {
			t.Error(err)
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, replicas*distinct*repeats)
	for r := range replicas {
		for g := range 8 {
			wg.Go(func() {
				for i := r*8 + g; i < distinct*repeats; i += replicas * 8 {
					key := ClaimKey("MD5", fmt.Sprintf("value-%d", i%distinct))
					var a Admission
					var err error
					for try := 0; try < 10; try++ {
						if a, err = buses[r].Claim(context.Background(), "run-restart", key, limit); err == nil {
							break
						}
						failures.Add(1)
						time.Sleep(200 * time.Millisecond)
					}
					if err != nil {
						errs <- fmt.Errorf("key %d: %w", i%distinct, err)
						return
					}
					answered.Add(1)
					if a.Admitted {
						if prev, loaded := admittedKeys.LoadOrStore(key, a.Slot); loaded && prev.(int) != a.Slot {
							errs <- fmt.Errorf("key %d admitted in slots %d and %d", i%distinct, prev, a.Slot)
						}
					} else if _, ok := admittedKeys.Load(key); ok {
						errs <- fmt.Errorf("key %d admitted once, then refused", i%distinct)
					}
				}
			})
		}
	}
	wg.Wait()
	<-restarted
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	n := 0
	admittedKeys.Range(func(_, _ any) bool { n++; return true })
	t.Logf("%d claims answered, %d failed and claimed again; %d distinct admitted", answered.Load(), failures.Load(), n)
	if n != limit {
		t.Fatalf("%d distinct indicators admitted through a restart; want exactly %d", n, limit)
	}
}
