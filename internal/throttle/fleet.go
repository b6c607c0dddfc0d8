package throttle

import (
	"context"
	"sync/atomic"
	"time"
)

// Fleet is a group of replicas sharing one rate limit (Triage's belongs
// to the API client, not to a replica): how many they are, and a pause
// one of them asks of all. bus.Fleet is one.
type Fleet interface {
	Members() int
	PausedUntil() time.Time
	Pause(ctx context.Context, until time.Time) error
}

// FleetRef holds the fleet a throttle shares its limit with, once it is
// known: a replica builds its clients before it joins (it must have a
// token before it takes work, and NATS comes after).
type FleetRef struct{ p atomic.Pointer[fleetBox] }

type fleetBox struct{ f Fleet }

// Set makes the throttles that share r take their share of the limit in
// f, and hold f's pauses.
func (r *FleetRef) Set(f Fleet) { r.p.Store(&fleetBox{f}) }

func (r *FleetRef) get() Fleet {
	if r == nil {
		return nil
	}
	if b := r.p.Load(); b != nil {
		return b.f
	}
	return nil
}

// Shared makes the throttle's rate limit the fleet's: each replica takes
// an equal share, as the members of r's fleet change, and a 429 seen by
// one pauses all.
func Shared(r *FleetRef) Option { return func(t *Throttle) { t.fleet = r } }
