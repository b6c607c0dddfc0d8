package bus

import (
	"context"
	cryptorand "crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/tqtriage/tqtriage/internal/termsafe"
)

// Admission is what Claim decided for one indicator of a run.
type Admission struct {
	Admitted bool // the indicator may reach Triage
	Slot     int  // its 1-based place among the run's admitted indicators
	Count    int  // admitted indicators of the run when decided
	Again    bool // it had been admitted before (a redelivery or a repeat)
}

// ClaimKey names a distinct indicator of a run in a subject token: what
// reaches Triage is a type and a value, so two ThreatQ indicators with the
// same normalised value are one object of the cap.
func ClaimKey(triageType, value string) string {
	h := sha256.New()
	h.Write([]byte(triageType))
	h.Write([]byte{0})
	h.Write([]byte(value))
	return base64.RawURLEncoding.EncodeToString(h.Sum(nil)[:18])
}

// DryRunScope is the run under which a dry run of runID claims its
// admissions (its claims are stored on tqtriage.claims.<run_id>.dryrun.…):
// apart from a real run's, so that a dry run never spends them, even one
// that shares its run id.
func DryRunScope(runID string) string { return runID + ".dryrun" }

// Claim admits the indicator key into run runID unless limit indicators of
// the run are admitted already. It is exact across any number of processes
// and redeliveries, short of a process dying in the middle of a claim:
//
//   - The run's count is one subject, advanced by compare-and-set (the
//     stream's expected last sequence per subject): no two processes can
//     reserve the same slot.
//   - Each admitted key's claim is stored on a subject of its own, on
//     condition that it has none yet, so that a key is admitted once
//     however many jobs carry it, and recognised at any later time (a
//     redelivery, a replayed dead letter) by one lookup.
//
// A repeated claim of an admitted key answers Admitted and Again.
//
// Claims of one run made at the same time in this process are decided by
// one caller for all (group commit, claimAll): the callers of one process
// never contend with each other for the run's count, and a group costs a
// few requests, not a few per key.
func (b *Bus) Claim(ctx context.Context, runID, key string, limit int) (Admission, error) {
	if limit <= 0 {
		return Admission{}, errors.New("claim: the objects-per-run limit must be positive")
	}
	req := &claimRequest{key: key, done: make(chan claimAnswer, 1)}
	qk := runID + "\x00" + strconv.Itoa(limit)
	b.claimMu.Lock()
	if b.claimQueues == nil {
		b.claimQueues = map[string]*claimQueue{}
	}
	q := b.claimQueues[qk]
	lead := q == nil
	if lead {
		q = &claimQueue{}
		b.claimQueues[qk] = q
	}
	q.pending = append(q.pending, req)
	b.claimMu.Unlock()

	if lead {
		b.leadClaims(qk, q, runID, limit)
	}
	select {
	case a := <-req.done:
		return a.adm, a.err
	case <-ctx.Done():
		return Admission{}, ctx.Err()
	}
}

type claimRequest struct {
	key  string
	done chan claimAnswer
}

type claimAnswer struct {
	adm Admission
	err error
}

type claimQueue struct{ pending []*claimRequest }

// maxClaimBatch bounds the claims decided in one group.
const maxClaimBatch = 256

// leadClaims commits the queue's claims, batch after batch, until the
// queue is empty; then the queue is removed and the next caller leads.
func (b *Bus) leadClaims(qk string, q *claimQueue, runID string, limit int) {
	for {
		b.claimMu.Lock()
		n := min(len(q.pending), maxClaimBatch)
		if n == 0 {
			delete(b.claimQueues, qk)
			b.claimMu.Unlock()
			return
		}
		reqs := q.pending[:n:n]
		q.pending = q.pending[n:]
		b.claimMu.Unlock()

		// The leader's own context must not cut short the others'
		// claims; each commit is bounded on its own.
		ctx, cancel := context.WithTimeout(context.Background(), claimCommitTimeout)
		answers, err := b.claimAll(ctx, runID, reqs, limit)
		cancel()
		for _, r := range reqs {
			if err != nil {
				r.done <- claimAnswer{err: claimFailed(runID, err)}
			} else {
				r.done <- claimAnswer{adm: answers[r.key]}
			}
		}
	}
}

// claimCommitTimeout bounds the commit of one group of claims.
const claimCommitTimeout = 30 * time.Second

// claimFailed is what each claim of a group whose commit failed gets: a
// transient error, to be tried again. The commit's own deadline (a stream
// without a leader for a while, during a failover) is not the caller's:
// left in the chain, context.DeadlineExceeded would read as the caller
// having ended, which is not retried, and the job would fail for good.
func claimFailed(runID string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("not decided within %v: %s", claimCommitTimeout, err)
	}
	return transient(fmt.Errorf("claim %s: %w", runID, err))
}

// claimAll decides the claims of the distinct keys in reqs, in rounds:
//
//  1. reserve: the run's count advances by as many keys as may still be
//     admitted, in one compare-and-set message that names them
//     ("count @highest key…": the keys hold the slots just below the
//     highest ever reserved);
//  2. mark: each key's claim is stored on its own subject, on condition
//     that the subject is empty (expected last subject sequence 0), all
//     at once; a key whose claim is there already was admitted before
//     (a repeat, another replica's): admitted again, its reserved slot
//     wasted;
//  3. return: the wasted slots are taken off the count, again by
//     compare-and-set, so that the count stays the number of distinct
//     keys admitted.
//
// A group of fresh keys costs two requests, however many keys it holds;
// keys are looked up first only where the round cannot reserve them all
// (at the cap, where a repeat must be told from a new key).
//
// A request whose answer is lost (the stream's leader moving, a NATS node
// restarted, a connection broken) is found out, not given up on: a read
// is made again, a claim is stored again and recognised by its slot, and
// a count whose fate is unknown is fenced (storeCount). Only a replica
// that dies between reserving and marking, or a commit that cannot reach
// the stream for all of claimCommitTimeout, leaves its reserved slots
// used: the redelivered jobs reserve again, and the run admits that many
// fewer (docs/flow.md, never more).
func (b *Bus) claimAll(ctx context.Context, runID string, reqs []*claimRequest, limit int) (map[string]Admission, error) {
	answers := make(map[string]Admission, len(reqs))
	var todo []string
	for _, r := range reqs {
		if _, dup := answers[r.key]; !dup {
			answers[r.key] = Admission{}
			todo = append(todo, r.key)
		}
	}
	looked := false
	for attempt := 0; len(todo) > 0; attempt++ {
		if err := backOff(ctx, attempt); err != nil {
			return nil, err
		}
		c, err := b.readCount(ctx, runID)
		if err != nil {
			return nil, err
		}
		if c.count+len(todo) > limit && !looked {
			// Not all can be reserved: those admitted before are
			// admitted again whatever the count, so find them first.
			if todo, err = b.checkClaims(ctx, runID, todo, answers); err != nil {
				return nil, err
			}
			looked = true
			attempt = -1
			continue
		}
		n := min(len(todo), limit-c.count)
		if n <= 0 {
			for _, k := range todo {
				answers[k] = Admission{Count: c.count}
			}
			return answers, nil
		}
		next := claimCount{count: c.count + n, highest: c.highest + n}
		stored, err := b.storeCount(ctx, runID, c.seq, next, todo[:n])
		if err != nil {
			return nil, err
		}
		if !stored {
			continue // another's count came first
		}
		wasted, err := b.mark(ctx, runID, todo[:n], c.highest, next.count, answers)
		if err != nil {
			return nil, err
		}
		if wasted > 0 {
			if err := b.returnSlots(ctx, runID, wasted); err != nil {
				return nil, err
			}
		}
		todo, attempt = todo[n:], -1
	}
	return answers, nil
}

// mark stores the claims of keys, reserved in the slots after highest,
// each on condition that the key has none yet. A key that has one is
// admitted again in the slot stored, and its reserved slot is wasted;
// unless the slot stored is the one reserved: the claim was this
// commit's, stored by a request whose answer was lost, and stored again.
func (b *Bus) mark(ctx context.Context, runID string, keys []string, highest, count int, answers map[string]Admission) (wasted int, err error) {
	slot := func(i int) int { return highest + i + 1 }
	pending := make([]int, len(keys))
	for i := range pending {
		pending[i] = i
	}
	var taken []int
	var lost error
	for attempt := 0; len(pending) > 0; attempt++ {
		if err := waitToRecover(ctx, attempt); err != nil {
			return 0, fmt.Errorf("store claim: %v; %w", lost, err)
		}
		futures := make([]jetstream.PubAckFuture, len(pending))
		for j, i := range pending {
			m := nats.NewMsg(claimSubject(runID, keys[i]))
			m.Data = []byte(strconv.Itoa(slot(i)))
			m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "0")
			if futures[j], err = b.js.PublishMsgAsync(m); err != nil {
				futures[j] = unsent{err}
			}
		}
		// An answer not back within claimRequestTimeout is taken for
		// lost: a stream leader that stopped answers nothing, and the
		// asynchronous publication's own timeout is the commit's.
		timeout := time.NewTimer(claimRequestTimeout)
		var again []int
	wait:
		for j, i := range pending {
			select {
			case <-timeout.C:
				lost = errors.New("no answer within " + claimRequestTimeout.String())
				again = append(again, pending[j:]...)
				break wait
			case <-futures[j].Ok():
				answers[keys[i]] = Admission{Admitted: true, Slot: slot(i), Count: count}
			case err := <-futures[j].Err():
				switch {
				case isWrongLastSequence(err):
					taken = append(taken, i)
				case refused(err):
					return 0, fmt.Errorf("store claim: %w", err)
				default:
					lost = err
					again = append(again, i)
				}
			case <-ctx.Done():
				timeout.Stop()
				return 0, ctx.Err()
			}
		}
		timeout.Stop()
		pending = again
	}
	if len(taken) == 0 {
		return 0, nil
	}
	takenKeys := make([]string, len(taken))
	for j, i := range taken {
		takenKeys[j] = keys[i]
	}
	rest, err := b.checkClaims(ctx, runID, takenKeys, answers)
	if err != nil {
		return 0, err
	}
	if len(rest) > 0 {
		// Refused as present, then not found: only a claim deleted in
		// between (the stream purged) would do it. Try again.
		return 0, fmt.Errorf("store claim: the claims of %d keys were there, then gone", len(rest))
	}
	for _, i := range taken {
		if answers[keys[i]].Slot == slot(i) {
			answers[keys[i]] = Admission{Admitted: true, Slot: slot(i), Count: count}
		} else {
			wasted++
		}
	}
	return wasted, nil
}

// unsent is the answer of a publication that could not be sent.
type unsent struct{ err error }

func (u unsent) Ok() <-chan *jetstream.PubAck { return nil }
func (u unsent) Err() <-chan error {
	c := make(chan error, 1)
	c <- u.err
	return c
}
func (u unsent) Msg() *nats.Msg { return nil }

// returnSlots takes n wasted slots off the run's count.
func (b *Bus) returnSlots(ctx context.Context, runID string, n int) error {
	for attempt := 0; ; attempt++ {
		if err := backOff(ctx, attempt); err != nil {
			return fmt.Errorf("return slots: %w", err)
		}
		c, err := b.readCount(ctx, runID)
		if err != nil {
			return err
		}
		stored, err := b.storeCount(ctx, runID, c.seq, claimCount{count: c.count - n, highest: c.highest}, nil)
		if stored || err != nil {
			return err
		}
	}
}

// backOff comes before each attempt at a compare-and-set on the count:
// none before the first; before each later one (another replica stored
// first), a wait a little longer each time, at random, so that replicas
// do not retry in lockstep; an error once there were too many.
func backOff(ctx context.Context, attempt int) error {
	if attempt > 1000 {
		return fmt.Errorf("still conflicting after %d attempts", attempt)
	}
	if attempt <= 0 {
		return nil
	}
	return sleep(ctx, time.Duration(rand.Int64N(int64(100*time.Microsecond)*int64(min(attempt, 20)))))
}

// waitToRecover comes before each attempt at a request whose answer was
// lost: none before the first; then from 100 ms, twice as long each time
// up to 2 s, at random within that, while the stream elects a leader or
// the connection is made again; until the commit's own deadline.
func waitToRecover(ctx context.Context, attempt int) error {
	if attempt <= 0 {
		return nil
	}
	d := min(100*time.Millisecond<<min(attempt-1, 5), 2*time.Second)
	return sleep(ctx, d/2+time.Duration(rand.Int64N(int64(d/2))))
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// claimRequestTimeout bounds one request of a commit, so that a request
// whose answer is lost is found out while the commit has time left.
var claimRequestTimeout = 5 * time.Second

// refused reports whether err is the stream's answer to a request (its
// fate known: not stored), rather than a request whose fate is unknown (a
// timeout, a broken connection, no stream leader to answer).
func refused(err error) bool { return apiError(err) != nil }

// countSubject holds a run's count; claimSubject, the claim of one key;
// fenceSubject, the fence of a count message whose fate was unknown.
func countSubject(runID string) string      { return claimsPrefix + runID + ".n" }
func claimSubject(runID, key string) string { return claimsPrefix + runID + ".k." + key }
func fenceSubject(runID, id string) string  { return claimsPrefix + runID + ".f." + id }

// claimCount is the last message of a run's count subject: the number of
// distinct keys admitted, and the highest slot ever reserved (slots of
// wasted reservations are not used again).
type claimCount struct {
	count, highest int
	seq            uint64 // the message's stream sequence (0: none yet)
}

// storeCount stores next on the run's count subject if its last message
// is still lastSeq, naming the keys reserved by it ("count @highest
// key…"), and answers whether it was stored: not when another's came
// first.
//
// A count message whose answer is lost may have been stored or not, and
// may still be on its way. Sent again, it could be counted twice; taken
// for lost, its slots would be used by nobody. So it carries a message id
// of its own, and then a fence is stored under the same id on a subject
// of its own. The claims stream keeps the ids of its messages for its
// duplicate window (minutes, against a commit's 30 s): if the count was
// stored, the fence is refused as its duplicate; if not, the fence takes
// the id, and the count message, were it still on its way, would be
// refused as the fence's duplicate. If the fence's own answer is lost, it
// is sent again: refused as a duplicate then, it is the fence's subject
// that tells which of the two holds the id.
func (b *Bus) storeCount(ctx context.Context, runID string, lastSeq uint64, next claimCount, keys []string) (bool, error) {
	data := make([]byte, 0, 24+len(keys)*(len(ClaimKey("", ""))+1))
	data = strconv.AppendInt(data, int64(next.count), 10)
	data = append(data, " @"...)
	data = strconv.AppendInt(data, int64(next.highest), 10)
	for _, k := range keys {
		data = append(data, ' ')
		data = append(data, k...)
	}
	id := cryptorand.Text() // the count message's own id: 128 random bits, one subject token
	m := nats.NewMsg(countSubject(runID))
	m.Data = data
	m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(lastSeq, 10))
	m.Header.Set(jetstream.MsgIDHeader, id)
	rctx, cancel := context.WithTimeout(ctx, claimRequestTimeout)
	_, err := b.js.PublishMsg(rctx, m)
	cancel()
	switch {
	case err == nil:
		return true, nil
	case isWrongLastSequence(err):
		return false, nil
	case refused(err):
		return false, fmt.Errorf("count: %w", err)
	}
	lost := err
	fence := fenceSubject(runID, id)
	for attempt := 1; ; attempt++ {
		if err := waitToRecover(ctx, attempt); err != nil {
			return false, fmt.Errorf("count: %v; whether it was stored is unknown: %w", lost, err)
		}
		f := nats.NewMsg(fence)
		f.Header.Set(jetstream.MsgIDHeader, id)
		rctx, cancel := context.WithTimeout(ctx, claimRequestTimeout)
		ack, err := b.js.PublishMsg(rctx, f)
		cancel()
		if err != nil {
			lost = err
			continue
		}
		stored := false
		if ack.Duplicate {
			_, found, err := b.getLast(ctx, fence)
			if err != nil {
				return false, fmt.Errorf("count: %v; whether it was stored is unknown: %w", lost, err)
			}
			stored = !found // not the fence's: the count's
		}
		b.log.Warn().Str("run", runID).AnErr("lost", lost).Bool("stored", stored).
			Msg("the answer to a claims count was lost; found out by a fence")
		return stored, nil
	}
}

// getLast reads the last message of subject, making the request again
// while its answer is lost; found is false if the subject holds none.
func (b *Bus) getLast(ctx context.Context, subject string) (m *jetstream.RawStreamMsg, found bool, err error) {
	for attempt := 0; ; attempt++ {
		if werr := waitToRecover(ctx, attempt); werr != nil {
			return nil, false, fmt.Errorf("%v; %w", err, werr)
		}
		rctx, cancel := context.WithTimeout(ctx, claimRequestTimeout)
		m, err = b.claims.GetLastMsgForSubject(rctx, subject)
		cancel()
		switch {
		case err == nil:
			return m, true, nil
		case errors.Is(err, jetstream.ErrMsgNotFound):
			return nil, false, nil
		case refused(err):
			return nil, false, err
		}
	}
}

// readCount reads the run's count. A message of the earlier form ("slot
// key", one key a message, slot equal to the count) is read as well.
func (b *Bus) readCount(ctx context.Context, runID string) (claimCount, error) {
	countSubj := countSubject(runID)
	m, found, err := b.getLast(ctx, countSubj)
	if err != nil {
		return claimCount{}, fmt.Errorf("read count: %w", err)
	}
	if !found {
		return claimCount{}, nil
	}
	first, rest, _ := strings.Cut(string(m.Data), " ")
	n, err := strconv.Atoi(first)
	if err != nil || n < 0 {
		return claimCount{}, fmt.Errorf("count %q of %s is not a number", termsafe.Clip(string(m.Data), 64), countSubj)
	}
	c := claimCount{count: n, highest: n, seq: m.Sequence}
	if h, ok := strings.CutPrefix(rest, "@"); ok {
		h, _, _ = strings.Cut(h, " ")
		if c.highest, err = strconv.Atoi(h); err != nil || c.highest < n {
			return claimCount{}, fmt.Errorf("count %q of %s has no valid highest slot", termsafe.Clip(string(m.Data), 64), countSubj)
		}
	}
	return c, nil
}

// checkClaims looks up each key's claim; a claimed key gets its answer
// (admitted again) and the unclaimed ones are returned.
func (b *Bus) checkClaims(ctx context.Context, runID string, keys []string, answers map[string]Admission) ([]string, error) {
	type found struct {
		slot int
		ok   bool
		err  error
	}
	res := make([]found, len(keys))
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for i, k := range keys {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			m, ok, err := b.getLast(ctx, claimSubject(runID, k))
			switch {
			case err != nil:
				res[i] = found{err: fmt.Errorf("read claim: %w", err)}
			case ok:
				slot, _ := strconv.Atoi(string(m.Data))
				res[i] = found{slot: slot, ok: true}
			}
		}()
	}
	wg.Wait()
	var rest []string
	for i, k := range keys {
		switch {
		case res[i].err != nil:
			return nil, res[i].err
		case res[i].ok:
			answers[k] = Admission{Admitted: true, Slot: res[i].slot, Again: true}
		default:
			rest = append(rest, k)
		}
	}
	return rest, nil
}
