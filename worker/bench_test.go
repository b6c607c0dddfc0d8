package worker_test

import (
	"context"
	"testing"
	"time"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/triage"
	"github.com/tqtriage/tqtriage/worker"
)

// createdTriage answers every create with its indicator, at once: what is
// measured is the worker's own work on a job, not HTTP (that is
// bench.BenchmarkWorkerCPU, the whole replica against the simulator).
type createdTriage struct{ worker.Triage }

func (createdTriage) CreateIndicator(_ context.Context, in triage.NewIndicator) (*triage.Indicator, error) {
	now := time.Now()
	return &triage.Indicator{ID: "325", ThreatLevel: in.ThreatLevel, ThreatType: in.ThreatType, ThreatValue: in.ThreatValue,
		ThreatSource: in.ThreatSource, CreatedAt: now, UpdatedAt: now}, nil
}

type admitAll struct{}

func (admitAll) Claim(context.Context, string, string, int) (bus.Admission, error) {
	return bus.Admission{Admitted: true, Slot: 1, Count: 1}, nil
}

var benchJob = []byte(`{"v":1,"run_id":"20261127T060258-5a7778bc","action":"create","seq":17,"indicator":{"id":106767,"type":"FQDN","value":"Login-Microsoft.Phish.Example.COM."},"reply_to":"tqtriage.results.20261127T060258-5a7778bc","threatq_known":true}`)

// BenchmarkHandleJob: one job's bytes to its encoded result: decode and
// check the job, map and normalise its value, claim it, create it (at
// once), encode the result. Per job, apart from HTTP and NATS.
func BenchmarkHandleJob(b *testing.B) {
	w, err := worker.New(worker.Config{}, createdTriage{}, admitAll{})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	a := bus.Attempt{N: 1, Max: 5, Subject: "tqtriage.jobs.create", Seq: 1}
	b.ReportAllocs()
	b.SetBytes(int64(len(benchJob)))
	for b.Loop() {
		job, err := message.ParseJob("tqtriage.jobs.create", benchJob)
		if err != nil {
			b.Fatal(err)
		}
		out := w.Handle(ctx, job, a)
		if out.Kind() != bus.KindDone || len(out.Publications()) != 1 {
			b.Fatalf("outcome %s", out.Kind())
		}
	}
}
