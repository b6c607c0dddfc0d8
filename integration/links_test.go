package integration

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/run"
	"github.com/tqtriage/tqtriage/threatq/threatqsim"
	"github.com/tqtriage/tqtriage/triage/triagesim"
	"github.com/tqtriage/tqtriage/worker"
)

// TestUpdateFindsAnIndicatorOnALaterPageBehindALoadBalancer: Triage's
// links name a load balancer's host, not the base URL the worker was
// given. An update whose lookup takes two pages (a value with a comma is
// looked up by the part before it, and 210 other indicators share that
// part) still finds its indicator: the worker pages by its own query and
// never calls the host the links name.
func TestUpdateFindsAnIndicatorOnALaterPageBehindALoadBalancer(t *testing.T) {
	e := newEnv(t)
	var trapped atomic.Int64
	trap := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		trapped.Add(1)
		http.Error(w, "not Triage", http.StatusTeapot)
	}))
	t.Cleanup(trap.Close)
	e.triage.SetBaseURL(trap.URL)

	const prefix = "https://lb.example/search?q=a"
	var decoys []triagesim.Indicator
	for i := range 210 {
		decoys = append(decoys, triagesim.Indicator{ThreatLevel: "Benign", ThreatType: "URL", ThreatValue: fmt.Sprintf("%s,decoy-%d", prefix, i), ThreatSource: worker.DefaultThreatSource})
	}
	var targets []threatqsim.SeedIndicator
	var inTriage []triagesim.Indicator
	for i := range 5 {
		v := fmt.Sprintf("%s,target-%d", prefix, i)
		targets = append(targets, threatqsim.SeedIndicator{Type: "URL", Value: v})
		inTriage = append(inTriage, triagesim.Indicator{ThreatLevel: "Benign", ThreatType: "URL", ThreatValue: v, ThreatSource: worker.DefaultThreatSource})
	}
	// The targets come after the decoys: on the second page of 200.
	if _, err := e.triage.Seed(append(decoys, inTriage...)...); err != nil {
		t.Fatal(err)
	}
	e.collection("lb", targets)

	out := e.run(e.once(workerConfig()), message.ActionUpdate, "lb", run.Options{ThreatLevel: "Suspicious"})
	if out.Failed() || out.Tally.Count(message.StatusUpdated) != len(targets) {
		t.Fatalf("update: %s", out.Tally.Line(out.Record.Total))
	}
	for _, tg := range targets {
		if in, ok := e.triage.Find("URL", tg.Value); !ok || in.ThreatLevel != "Suspicious" {
			t.Fatalf("%s in Triage: %+v", tg.Value, in)
		}
	}
	if n := trapped.Load(); n != 0 {
		t.Fatalf("%d requests went to the host Triage's links name", n)
	}
	if n := e.triage.Stats().Requests[triagesim.EndpointList]; n < 2*int64(len(targets)) {
		t.Fatalf("%d list requests; want two pages a lookup", n)
	}
}
