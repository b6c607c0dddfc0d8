package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Write-back applies the results of one ThreatQ indicator in the order
// they were answered: for each indicator it keeps, per attribute name,
// the time of the last result written, in the key-value bucket
// BucketApplied under the indicator's id (docs/flow.md, "Write-back
// order"). The bucket is changed by compare-and-set, so that two replicas
// cannot both decide on what they read before the other wrote.

// ErrAppliedChanged is SetApplied's answer when the entry was changed
// since it was read: read it again and decide again.
var ErrAppliedChanged = errors.New("the indicator's write-back entry changed meanwhile")

// Applied is, per attribute name, the time of the last result written to
// one ThreatQ indicator.
type Applied map[string]time.Time

// appliedEntry is an Applied as the bucket stores it: {"v":1,"at":{name:
// RFC 3339 time}}.
type appliedEntry struct {
	V  int     `json:"v"`
	At Applied `json:"at"`
}

func appliedKey(indicatorID int64) string { return strconv.FormatInt(indicatorID, 10) }

// LastApplied reads the entry of a ThreatQ indicator, and its revision
// for SetApplied (0: there is none). An entry that does not parse is
// treated as none, at its revision: the next SetApplied replaces it.
func (b *Bus) LastApplied(ctx context.Context, indicatorID int64) (Applied, uint64, error) {
	e, err := b.applied.Get(ctx, appliedKey(indicatorID))
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return nil, 0, nil
	case err != nil:
		return nil, 0, fmt.Errorf("read the write-back order of indicator %d: %w", indicatorID, requestFailed(ctx, err))
	}
	var v appliedEntry
	if json.Unmarshal(e.Value(), &v) != nil || v.V != 1 {
		b.log.Warn().Int64("indicator", indicatorID).Msg("write-back order entry does not parse; it will be replaced")
		return nil, e.Revision(), nil
	}
	return v.At, e.Revision(), nil
}

// SetApplied stores a ThreatQ indicator's entry if it is still at
// revision rev (0: if there is none): otherwise ErrAppliedChanged.
func (b *Bus) SetApplied(ctx context.Context, indicatorID int64, a Applied, rev uint64) error {
	data, err := json.Marshal(appliedEntry{V: 1, At: a})
	if err != nil {
		return fmt.Errorf("encode the write-back order of indicator %d: %w", indicatorID, err)
	}
	key := appliedKey(indicatorID)
	if rev == 0 {
		_, err = b.applied.Create(ctx, key, data)
	} else {
		_, err = b.applied.Update(ctx, key, data, rev)
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, jetstream.ErrKeyExists) || isWrongLastSequence(err):
		return ErrAppliedChanged
	}
	return fmt.Errorf("store the write-back order of indicator %d: %w", indicatorID, requestFailed(ctx, err))
}
