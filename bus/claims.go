package bus

import (
	"context"
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
// and redeliveries:
//
//   - The run's count is one subject, advanced by compare-and-set (the
//     stream's expected last sequence per subject): one admission, one
//     message, so no two processes can take the same place.
//   - Each count message carries a Nats-Msg-Id naming the run and key, so
//     a second admission of a key within the duplicate window is refused
//     by the server as a duplicate, whatever happened in between (a worker
//     that died right after counting).
//   - After counting, the key's claim is stored on a subject of its own, so
//     that an admitted key is recognised at any later time (a replayed dead
//     letter) by one lookup.
//
// A repeated claim of an admitted key answers Admitted and Again.
//
// Claims of one run made at the same time in this process are decided by
// one caller for all (group commit): the callers of one process never
// contend with each other for the run's count, and the lookups and claim
// writes of a group go out together.
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

// claimAll decides the claims of the distinct keys in reqs.
func (b *Bus) claimAll(ctx context.Context, runID string, reqs []*claimRequest, limit int) (map[string]Admission, error) {
	answers := make(map[string]Admission, len(reqs))
	var keys []string
	for _, r := range reqs {
		if _, dup := answers[r.key]; !dup {
			answers[r.key] = Admission{}
			keys = append(keys, r.key)
		}
	}
	todo, err := b.checkClaims(ctx, runID, keys, answers)
	if err != nil {
		return nil, err
	}
	countSubj := claimsPrefix + runID + ".n"
	count, countSeq, err := b.readCount(ctx, countSubj)
	if err != nil {
		return nil, err
	}
	var marks []jetstream.PubAckFuture
	for _, k := range todo {
		for attempt := 0; ; attempt++ {
			if count >= limit {
				answers[k] = Admission{Count: count}
				break
			}
			ack, err := b.countOne(ctx, runID, countSubj, countSeq, count+1, k)
			if err == nil {
				if ack.Duplicate {
					// Counted before (by a worker that died before
					// storing its claim): admitted then, not again now.
					answers[k] = Admission{Admitted: true, Again: true, Count: count}
				} else {
					count, countSeq = count+1, ack.Sequence
					answers[k] = Admission{Admitted: true, Slot: count, Count: count}
				}
				f, err := b.publishAsync(Publication{Subject: claimsPrefix + runID + ".k." + k, Data: []byte(strconv.Itoa(answers[k].Slot))})
				if err != nil {
					return nil, fmt.Errorf("store claim: %w", err)
				}
				marks = append(marks, f)
				break
			}
			if !isWrongLastSequence(err) {
				return nil, err
			}
			if attempt > 1000 {
				return nil, fmt.Errorf("still conflicting after %d attempts", attempt)
			}
			// Another replica counted first: read the count again, a
			// little later each time so replicas do not retry in
			// lockstep.
			if attempt > 0 {
				select {
				case <-ctx.Done():
					return nil, ctx.Err()
				case <-time.After(time.Duration(rand.Int64N(int64(100*time.Microsecond) * int64(min(attempt, 20))))):
				}
			}
			if count, countSeq, err = b.readCount(ctx, countSubj); err != nil {
				return nil, err
			}
		}
	}
	// A job goes to Triage only once its claim is stored.
	for _, f := range marks {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return nil, fmt.Errorf("store claim: %w", err)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return answers, nil
}

// countOne advances the run's count from countSeq to slot for key.
func (b *Bus) countOne(ctx context.Context, runID, countSubj string, countSeq uint64, slot int, key string) (*jetstream.PubAck, error) {
	m := nats.NewMsg(countSubj)
	m.Data = []byte(strconv.Itoa(slot) + " " + key)
	m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(countSeq, 10))
	m.Header.Set(jetstream.MsgIDHeader, "claim/"+runID+"/"+key)
	ack, err := b.js.PublishMsg(ctx, m)
	if err != nil {
		return nil, fmt.Errorf("count: %w", err)
	}
	return ack, nil
}

func (b *Bus) readCount(ctx context.Context, countSubj string) (int, uint64, error) {
	m, err := b.claims.GetLastMsgForSubject(ctx, countSubj)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("read count: %w", err)
	}
	slot, _, _ := strings.Cut(string(m.Data), " ")
	n, err := strconv.Atoi(slot)
	if err != nil {
		return 0, 0, fmt.Errorf("count %q of %s is not a number", m.Data, countSubj)
	}
	return n, m.Sequence, nil
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
			m, err := b.claims.GetLastMsgForSubject(ctx, claimsPrefix+runID+".k."+k)
			switch {
			case err == nil:
				slot, _ := strconv.Atoi(string(m.Data))
				res[i] = found{slot: slot, ok: true}
			case !errors.Is(err, jetstream.ErrMsgNotFound):
				res[i] = found{err: fmt.Errorf("read claim: %w", err)}
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
