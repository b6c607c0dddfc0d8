package bus

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
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

// Claim admits the indicator key into run runID unless limit indicators of
// the run are admitted already. It is exact across any number of processes
// and redeliveries: the run's count and the indicators' claims are written
// together in one atomic batch, conditional on the count not having moved
// and no claim existing (compare-and-set on the stream's last sequence per
// subject). A repeated claim of an admitted key answers Admitted and Again.
//
// Claims of one run made at the same time in this process are committed
// together (group commit): one caller leads and writes the batch for all
// that queued meanwhile, so the cost of a commit, a staged write on the
// server, is shared, and the callers of one process never contend with each
// other for the run's count.
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

// maxClaimBatch keeps a commit well under the server's limit of 1000
// messages in an atomic batch.
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
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		answers, err := b.claimAll(ctx, runID, reqs, limit)
		cancel()
		for _, r := range reqs {
			if err != nil {
				r.done <- claimAnswer{err: fmt.Errorf("claim %s: %w", runID, err)}
			} else {
				r.done <- claimAnswer{adm: answers[r.key]}
			}
		}
	}
}

// claimAll decides the claims of distinct keys in reqs.
func (b *Bus) claimAll(ctx context.Context, runID string, reqs []*claimRequest, limit int) (map[string]Admission, error) {
	answers := make(map[string]Admission, len(reqs))
	var todo []string
	for _, r := range reqs {
		if _, dup := answers[r.key]; !dup {
			answers[r.key] = Admission{}
			todo = append(todo, r.key)
		}
	}
	countSubj := claimsPrefix + runID + ".n"
	checked := false // todo holds only keys found unclaimed since the count was last read
	var lastSeq uint64
	for attempt := 0; ; attempt++ {
		if attempt > 200 {
			return nil, fmt.Errorf("still conflicting after %d attempts", attempt)
		}
		count, countSeq, err := b.readCount(ctx, countSubj)
		if err != nil {
			return nil, err
		}
		if attempt > 0 && countSeq == lastSeq {
			// The commit failed though the count did not move: a key
			// was claimed (a redelivery, or another replica).
			checked = false
		}
		lastSeq = countSeq
		if !checked && (count+len(todo) > limit || attempt > 0) {
			// Near the limit (or after a conflict) an already admitted
			// key must be told apart from a new one before any is
			// refused: look each up.
			if todo, err = b.checkClaims(ctx, runID, todo, answers); err != nil {
				return nil, err
			}
			checked = true
		}
		n := min(len(todo), limit-count)
		if n <= 0 {
			for _, k := range todo {
				answers[k] = Admission{Count: count}
			}
			return answers, nil
		}
		err = b.claimBatch(ctx, runID, countSubj, countSeq, count, todo[:n])
		if err == nil {
			for i, k := range todo[:n] {
				answers[k] = Admission{Admitted: true, Slot: count + 1 + i, Count: count + n}
			}
			for _, k := range todo[n:] {
				answers[k] = Admission{Count: count + n}
			}
			return answers, nil
		}
		if !isWrongLastSequence(err) {
			return nil, err
		}
		// Another replica moved first: try again, a little later each
		// time so that replicas do not retry in lockstep.
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Duration(rand.Int64N(int64(time.Millisecond) * int64(min(attempt+1, 10))))):
		}
	}
}

func (b *Bus) readCount(ctx context.Context, countSubj string) (int, uint64, error) {
	m, err := b.claims.GetLastMsgForSubject(ctx, countSubj)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("read count: %w", err)
	}
	n, err := strconv.Atoi(string(m.Data))
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

// claimBatch writes the new count and the keys' claims as one atomic
// batch: all or none. The count must still be at countSeq and no key may
// have a claim.
func (b *Bus) claimBatch(ctx context.Context, runID, countSubj string, countSeq uint64, count int, keys []string) error {
	id := nuid.Next()
	msg := func(subj string, seq int, data string) *nats.Msg {
		m := nats.NewMsg(subj)
		m.Data = []byte(data)
		m.Header.Set("Nats-Batch-Id", id)
		m.Header.Set("Nats-Batch-Sequence", strconv.Itoa(seq))
		return m
	}
	first := msg(countSubj, 1, strconv.Itoa(count+len(keys)))
	first.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(countSeq, 10))
	if err := b.nc.PublishMsg(first); err != nil {
		return fmt.Errorf("publish count: %w", err)
	}
	for i, k := range keys {
		m := msg(claimsPrefix+runID+".k."+k, i+2, strconv.Itoa(count+1+i))
		m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "0")
		if i < len(keys)-1 {
			if err := b.nc.PublishMsg(m); err != nil {
				return fmt.Errorf("publish claim: %w", err)
			}
			continue
		}
		m.Header.Set("Nats-Batch-Commit", "1")
		resp, err := b.nc.RequestMsgWithContext(ctx, m)
		if err != nil {
			return fmt.Errorf("commit claims: %w", err)
		}
		return pubAckError(resp.Data)
	}
	return nil
}
