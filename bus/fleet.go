package bus

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// BucketFleet holds the heartbeats of the replicas that share a budget,
// and the pauses one of them asks of all.
const BucketFleet = "TQTRIAGE_FLEET"

// How often a member says it is there, and how long without a word before
// the others count it gone. A replica that stops cleanly says so at once.
const (
	fleetBeat    = time.Second
	fleetTimeout = 3 * fleetBeat
)

// Fleet is this replica's membership of a group of replicas that share one
// budget (Triage's rate limit belongs to the API client, not to a replica):
// each knows how many there are, to take its share, and a pause one asks
// for (after a 429) holds for all. It lives on a key-value bucket: a
// heartbeat key per member, and one key for the latest pause.
type Fleet struct {
	kv    jetstream.KeyValue
	group string
	self  string
	stop  context.CancelFunc
	done  chan struct{}

	mu      sync.Mutex
	seen    map[string]time.Time // member key → when last heard
	paused  time.Time            // the latest pause asked of the group
	changed chan struct{}        // closed and renewed when the members change
}

// JoinFleet makes this process a member of group until Leave. It returns
// once the members already there are known, so that the first share taken
// is not the whole budget.
func (b *Bus) JoinFleet(ctx context.Context, group string) (*Fleet, error) {
	if b.fleet == nil {
		return nil, errors.New("fleet: this process's role does not open the fleet bucket")
	}
	if !validToken(group) {
		return nil, fmt.Errorf("fleet: group %q must be one subject token", group)
	}
	host, _ := os.Hostname()
	var r [4]byte
	_, _ = rand.Read(r[:])
	self := group + ".m." + sanitizeToken(host) + "-" + strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(r[:])
	f := &Fleet{kv: b.fleet, group: group, self: self, seen: map[string]time.Time{self: time.Now()}, changed: make(chan struct{}), done: make(chan struct{})}

	wctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	f.stop = stop
	w, err := f.kv.Watch(wctx, group+".>")
	if err != nil {
		stop()
		return nil, fmt.Errorf("fleet %s: %w", group, err)
	}
	if _, err := f.kv.Put(ctx, self, []byte(time.Now().UTC().Format(time.RFC3339Nano))); err != nil {
		stop()
		_ = w.Stop()
		return nil, fmt.Errorf("fleet %s: %w", group, err)
	}
	// The watcher first replays what the bucket holds, then a nil entry.
	initial := make(chan struct{})
	go f.watch(wctx, w, initial)
	select {
	case <-initial:
	case <-ctx.Done():
		f.Leave()
		return nil, ctx.Err()
	}
	go f.beat(wctx, b)
	return f, nil
}

func (f *Fleet) watch(ctx context.Context, w jetstream.KeyWatcher, initial chan struct{}) {
	defer close(f.done)
	defer func() { _ = w.Stop() }()
	prune := time.NewTicker(fleetBeat)
	defer prune.Stop()
	replayed := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-prune.C:
			f.prune(time.Now())
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e == nil {
				if !replayed {
					replayed = true
					close(initial)
				}
				continue
			}
			f.apply(e, time.Now())
		}
	}
}

// apply records one change of the bucket.
func (f *Fleet) apply(e jetstream.KeyValueEntry, now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := e.Key()
	if key == f.group+".pause" {
		if e.Operation() != jetstream.KeyValuePut {
			return
		}
		if ns, err := strconv.ParseInt(string(e.Value()), 10, 64); err == nil {
			if until := time.Unix(0, ns); until.After(f.paused) {
				f.paused = until
			}
		}
		return
	}
	if !strings.HasPrefix(key, f.group+".m.") {
		return
	}
	_, had := f.seen[key]
	switch {
	case e.Operation() != jetstream.KeyValuePut:
		delete(f.seen, key)
	case now.Sub(e.Created()) < fleetTimeout || key == f.self:
		// A replayed heartbeat older than the timeout is of a member gone.
		f.seen[key] = now
	}
	if _, has := f.seen[key]; has != had {
		f.notifyLocked()
	}
}

func (f *Fleet) prune(now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seen[f.self] = now
	for k, at := range f.seen {
		if k != f.self && now.Sub(at) > fleetTimeout {
			delete(f.seen, k)
			f.notifyLocked()
		}
	}
}

func (f *Fleet) notifyLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *Fleet) beat(ctx context.Context, b *Bus) {
	t := time.NewTicker(fleetBeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			pctx, cancel := context.WithTimeout(ctx, fleetBeat)
			if _, err := f.kv.Put(pctx, f.self, []byte(time.Now().UTC().Format(time.RFC3339Nano))); err != nil && ctx.Err() == nil {
				b.log.Warn().Err(err).Str("group", f.group).Msg("fleet heartbeat not stored; the others may count this replica gone")
			}
			cancel()
		}
	}
}

// Members is how many replicas share the budget now, this one included.
func (f *Fleet) Members() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return max(1, len(f.seen))
}

// Changed is closed when the number of members changes.
func (f *Fleet) Changed() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

// PausedUntil is the latest pause any member asked of the group.
func (f *Fleet) PausedUntil() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.paused
}

// Pause asks every member to send nothing until until (a 429's
// Retry-After). A pause shorter than the one in force changes nothing.
func (f *Fleet) Pause(ctx context.Context, until time.Time) error {
	f.mu.Lock()
	later := until.After(f.paused)
	if later {
		f.paused = until
	}
	f.mu.Unlock()
	if !later {
		return nil
	}
	_, err := f.kv.Put(ctx, f.group+".pause", []byte(strconv.FormatInt(until.UnixNano(), 10)))
	return err
}

// Leave says this member is gone and stops its heartbeat.
func (f *Fleet) Leave() {
	f.stop()
	<-f.done
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = f.kv.Delete(ctx, f.self)
}

func validToken(s string) bool {
	return s != "" && !strings.ContainsAny(s, ".*> \t\r\n")
}

// sanitizeToken makes s usable in a key: letters, digits, '-' and '_'.
func sanitizeToken(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			b[i] = '_'
		}
	}
	if len(b) > 40 {
		b = b[:40]
	}
	return string(b)
}
