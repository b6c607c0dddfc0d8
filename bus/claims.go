package bus

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
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
// and redeliveries: the run's count and the indicator's claim are written
// together in one atomic batch, conditional on the count not having moved
// and the claim not existing (compare-and-set on the stream's last sequence
// per subject). A conflict means another worker moved first: read again and
// retry. A repeated claim of an admitted key answers Admitted and Again.
func (b *Bus) Claim(ctx context.Context, runID, key string, limit int) (Admission, error) {
	if limit <= 0 {
		return Admission{}, errors.New("claim: the objects-per-run limit must be positive")
	}
	countSubj := claimsPrefix + runID + ".n"
	keySubj := claimsPrefix + runID + ".k." + key
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return Admission{}, err
		}
		if m, err := b.claims.GetLastMsgForSubject(ctx, keySubj); err == nil {
			slot, _ := strconv.Atoi(string(m.Data))
			return Admission{Admitted: true, Slot: slot, Again: true}, nil
		} else if !errors.Is(err, jetstream.ErrMsgNotFound) {
			return Admission{}, fmt.Errorf("claim %s: read claim: %w", runID, err)
		}
		var count int
		var countSeq uint64
		if m, err := b.claims.GetLastMsgForSubject(ctx, countSubj); err == nil {
			count, _ = strconv.Atoi(string(m.Data))
			countSeq = m.Sequence
		} else if !errors.Is(err, jetstream.ErrMsgNotFound) {
			return Admission{}, fmt.Errorf("claim %s: read count: %w", runID, err)
		}
		if count >= limit {
			return Admission{Admitted: false, Count: count}, nil
		}
		err := b.claimBatch(ctx, countSubj, countSeq, keySubj, count+1)
		if err == nil {
			return Admission{Admitted: true, Slot: count + 1, Count: count + 1}, nil
		}
		if !isWrongLastSequence(err) {
			return Admission{}, fmt.Errorf("claim %s: %w", runID, err)
		}
		// Lost a race: back off a little (more as conflicts repeat) so
		// that replicas contending for one run do not spin in lockstep.
		if attempt > 1000 {
			return Admission{}, fmt.Errorf("claim %s: still conflicting after %d attempts", runID, attempt)
		}
		d := time.Duration(rand.Int64N(int64(time.Millisecond) * int64(min(attempt+1, 20))))
		select {
		case <-ctx.Done():
			return Admission{}, ctx.Err()
		case <-time.After(d):
		}
	}
}

// claimBatch writes the new count and the key's claim as one atomic batch:
// both or neither.
func (b *Bus) claimBatch(ctx context.Context, countSubj string, countSeq uint64, keySubj string, slot int) error {
	id := nuid.Next()
	val := []byte(strconv.Itoa(slot))

	first := nats.NewMsg(countSubj)
	first.Data = val
	first.Header.Set("Nats-Batch-Id", id)
	first.Header.Set("Nats-Batch-Sequence", "1")
	first.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(countSeq, 10))
	if err := b.nc.PublishMsg(first); err != nil {
		return fmt.Errorf("publish count: %w", err)
	}

	commit := nats.NewMsg(keySubj)
	commit.Data = val
	commit.Header.Set("Nats-Batch-Id", id)
	commit.Header.Set("Nats-Batch-Sequence", "2")
	commit.Header.Set("Nats-Batch-Commit", "1")
	commit.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "0")
	resp, err := b.nc.RequestMsgWithContext(ctx, commit)
	if err != nil {
		return fmt.Errorf("commit claim: %w", err)
	}
	return pubAckError(resp.Data)
}
