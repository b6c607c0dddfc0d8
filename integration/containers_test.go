package integration

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tqtriage/tqtriage/internal/sample"
	"github.com/tqtriage/tqtriage/message"
	"github.com/tqtriage/tqtriage/run"
	"github.com/tqtriage/tqtriage/threatq"
	"github.com/tqtriage/tqtriage/triage"
)

// TestContainers runs the service as it is deployed (deployments/, the
// images FROM scratch) on a three-node cluster, and breaks things during
// runs of several thousand indicators. One cluster serves both subtests,
// in turn: the first run creates its indicators in Triage through a kill
// and a failover, the second writes changed attributes back through a
// ThreatQ outage.
func TestContainers(t *testing.T) {
	c := startCluster(t, clusterSettings{
		sample: 4000,
		// Below the collection's valid indicators: the cap must hold
		// across three replicas, through a kill and a failover.
		cap:     3000,
		workers: 3,
		// 3 workers × 4 jobs at 40 ms: a run lasts long enough to break
		// things in the middle of it, on two cores.
		concurrency:   4,
		triageLatency: 40 * time.Millisecond,
	})
	var seen triageSeen
	t.Run("WorkerKilledAndNATSNodeRestartedDuringARun", func(t *testing.T) {
		c.t = t
		ctx := context.Background()
		id, began := c.publish(ctx)
		c.waitProgress(ctx, id, 0.2, 2*time.Minute)
		c.kill(ctx, c.workers[1])
		t.Logf("%v: worker-2 killed (SIGKILL)", time.Since(began).Round(time.Millisecond))

		c.waitProgress(ctx, id, 0.4, 2*time.Minute)
		// The node leading the jobs stream: the harder case.
		n := c.leaderOf(ctx, "TQTRIAGE_JOBS")
		stop := 10 * time.Second
		if err := c.nats[n].Stop(ctx, &stop); err != nil {
			t.Fatal(err)
		}
		t.Logf("%v: nats-%d (leader of TQTRIAGE_JOBS) stopped", time.Since(began).Round(time.Millisecond), n+1)
		time.Sleep(5 * time.Second) // the run goes on on two nodes
		if err := c.nats[n].Start(ctx); err != nil {
			t.Fatal(err)
		}
		c.jetStreamHealthy(ctx, n, time.Minute)
		t.Logf("%v: nats-%d started again and current", time.Since(began).Round(time.Millisecond), n+1)

		c.waitComplete(ctx, id, 4*time.Minute)
		// The killed worker may have created indicators in Triage without
		// storing their results, and so may every worker whose results
		// could not be stored while its NATS node was away: their
		// redeliveries answer exists, with the same Triage indicator
		// (docs/flow.md).
		c.verify(ctx, id, began, &seen, true)
	})
	t.Run("ThreatQAwayDuringWriteBack", func(t *testing.T) {
		c.t = t
		ctx := context.Background()
		// The first run wrote its attributes; a second that found them
		// unchanged would need no request. An analyst changes them in
		// ThreatQ, so that this run has every one to write back.
		c.tamper(ctx)
		id, began := c.publish(ctx)
		// Write-back under way: some results written, more to come.
		c.waitWritten(ctx, id, 300, 2*time.Minute)
		c.simOutage(true)
		t.Logf("%v: ThreatQ down", time.Since(began).Round(time.Millisecond))
		time.Sleep(8 * time.Second)
		tally, rec, err := run.Status(ctx, c.b, id)
		if err != nil {
			t.Fatal(err)
		}
		// Results go on arriving (the workers need no ThreatQ) and wait.
		if tally.AwaitingWriteback() < 100 {
			t.Fatalf("8 s into ThreatQ's outage, %d results await write-back; want them held back: %s", tally.AwaitingWriteback(), tally.Line(rec.Total))
		}
		t.Logf("%v: during the outage: %s, %d awaiting write-back", time.Since(began).Round(time.Millisecond), tally.Line(rec.Total), tally.AwaitingWriteback())
		c.simOutage(false)
		t.Logf("%v: ThreatQ back", time.Since(began).Round(time.Millisecond))
		c.waitComplete(ctx, id, 4*time.Minute)
		c.verify(ctx, id, began, &seen, false)
	})
}

// tamper sets every collection indicator's Threat Level attribute to
// Benign, as an analyst might in ThreatQ.
func (c *cluster) tamper(ctx context.Context) {
	c.t.Helper()
	var ids []int64
	for ind, err := range c.threatq.CollectionIndicators(ctx, sample.CollectionHash, 500) {
		if err != nil {
			c.t.Fatal(err)
		}
		ids = append(ids, ind.ID)
	}
	work := make(chan int64)
	var wg sync.WaitGroup
	var mu sync.Mutex
	changed := 0
	for range 8 {
		wg.Go(func() {
			for id := range work {
				attrs, err := c.threatq.Attributes(ctx, id)
				if err == nil && len(attrs) > 0 {
					err = c.threatq.SetAttributes(ctx, id, []threatq.Attribute{{Name: "Threat Level", Value: "Benign"}})
					mu.Lock()
					changed++
					mu.Unlock()
				}
				if err != nil {
					c.t.Errorf("indicator %d: %v", id, err)
				}
			}
		})
	}
	for _, id := range ids {
		work <- id
	}
	close(work)
	wg.Wait()
	c.t.Logf("an analyst set Threat Level to Benign on %d ThreatQ indicators", changed)
}

var runIDLine = regexp.MustCompile(`(?m)^(\d{8}T\d{6}-[0-9a-f]{8})\s*$`)

// publish publishes a create run of the simulator's sample collection
// from a container, as the publisher, and returns its id.
func (c *cluster) publish(ctx context.Context) (string, time.Time) {
	c.t.Helper()
	began := time.Now()
	code, out := c.once(ctx, c.roleEnv("publisher", "THREATQ_"), "publish", "--action", "create", "--collection", sample.CollectionHash)
	m := runIDLine.FindStringSubmatch(out)
	if code != 0 || m == nil {
		c.t.Fatalf("publish: exit %d, no run id%s", code, out)
	}
	c.t.Logf("%v: run %s published", time.Since(began).Round(time.Millisecond), m[1])
	return m[1], began
}

// waitFor polls the run's status until ok.
func (c *cluster) waitFor(ctx context.Context, id, what string, within time.Duration, ok func(*run.Tally, run.Record) bool) {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for {
		tally, rec, err := run.Status(ctx, c.b, id)
		if err == nil && rec.Published && ok(tally, rec) {
			return
		}
		if time.Now().After(deadline) {
			line := fmt.Sprint(err)
			if tally != nil {
				line = tally.Line(rec.Total)
			}
			c.t.Fatalf("run %s: not %s within %v: %s", id, what, within, line)
		}
		time.Sleep(time.Second)
	}
}

func (c *cluster) waitProgress(ctx context.Context, id string, share float64, within time.Duration) {
	c.t.Helper()
	c.waitFor(ctx, id, fmt.Sprintf("%.0f%% answered", share*100), within, func(t *run.Tally, r run.Record) bool {
		return float64(t.Done()) >= share*float64(r.Total)
	})
}

func (c *cluster) waitWritten(ctx context.Context, id string, n int, within time.Duration) {
	c.t.Helper()
	c.waitFor(ctx, id, fmt.Sprintf("%d written back", n), within, func(t *run.Tally, r run.Record) bool {
		return t.Done()-t.AwaitingWriteback() >= n
	})
}

func (c *cluster) waitComplete(ctx context.Context, id string, within time.Duration) {
	c.t.Helper()
	c.waitFor(ctx, id, "complete", within, func(t *run.Tally, r run.Record) bool {
		return int64(t.Done()) == r.Total && t.AwaitingWriteback() == 0
	})
}

// triageSeen is what earlier runs put in Triage, by Triage id.
type triageSeen map[string]bool

var statusCount = regexp.MustCompile(`(?m)^  (created|exists|updated|not_found|invalid|skipped|failed)\s+(\d+)\s`)

// verify checks a finished run against the simulators and `tqtriage
// status`, and prints what it came to. disrupted says deliveries may
// have been lost (a worker killed, a NATS node stopped): a create whose
// result was not stored is answered exists when delivered again, for the
// indicator this run put in Triage, and may leave a slot of the cap used.
func (c *cluster) verify(ctx context.Context, id string, began time.Time, seen *triageSeen, disrupted bool) {
	t := c.t
	t.Helper()
	took := time.Since(began)

	// The collection, as ThreatQ serves it.
	var inds []threatq.Indicator
	for ind, err := range c.threatq.CollectionIndicators(ctx, sample.CollectionHash, 500) {
		if err != nil {
			t.Fatal(err)
		}
		inds = append(inds, ind)
	}

	// Every job exactly one result.
	res := results(t, c.b, id)
	counts := map[message.Status]int{}
	for _, ind := range inds {
		rs := res[ind.ID]
		if len(rs) != 1 {
			t.Errorf("indicator %d: %d results, want exactly one", ind.ID, len(rs))
			continue
		}
		counts[rs[0].Status]++
	}
	if len(res) != len(inds) {
		t.Errorf("results for %d indicators; the collection has %d", len(res), len(inds))
	}
	if counts[message.StatusFailed] > 0 {
		t.Errorf("%d jobs failed", counts[message.StatusFailed])
		for _, rs := range res {
			if r := rs[0]; r.Status == message.StatusFailed {
				t.Logf("failed: indicator %d (%s %q), %d attempts: %s", r.Indicator.ID, r.Indicator.Type, r.Indicator.Value, r.Attempts, r.Reason)
			}
		}
	}

	// The cap: never more than cap of the valid indicators reached
	// Triage, and, without lost deliveries, exactly cap. A worker killed
	// after reserving slots for its group of claims and before storing
	// the claims leaves those slots used (at most its 4 jobs in hand; a
	// known gap, docs/deploy.md). With lost deliveries the test allows 1%
	// of the cap for it, so that a gross loss of admissions still fails.
	valid := len(inds) - counts[message.StatusInvalid]
	admitted := counts[message.StatusCreated] + counts[message.StatusExists]
	want := min(c.settings.cap, valid)
	atLeast := want
	if disrupted {
		atLeast = want - want/100
	}
	if admitted > want || admitted < atLeast || admitted+counts[message.StatusSkipped]+counts[message.StatusFailed] != valid {
		t.Errorf("objects-per-run cap %d: %d admitted (created or exists), %d skipped, of %d valid; want %d (at least %d)",
			c.settings.cap, admitted, counts[message.StatusSkipped], valid, want, atLeast)
	}
	if admitted < want {
		t.Logf("objects-per-run cap %d: %d admitted: %d slots taken by lost deliveries", c.settings.cap, admitted, want-admitted)
	}

	// Triage holds each admitted indicator, once, from tqtriage's source;
	// another team's indicators of the same values stay as they were.
	inTriage := map[string]triage.Indicator{}
	byValue := map[string]int{}
	others := 0
	for ind, err := range c.triage.ListIndicators(ctx, triage.ListOptions{}) {
		if err != nil {
			t.Fatal(err)
		}
		if ind.ThreatSource != sample.Source {
			if ind.ThreatSource != sample.OtherSource || ind.ThreatLevel != "Benign" {
				t.Errorf("Triage indicator %s: source %q, level %q: another team's indicator was changed", ind.ID, ind.ThreatSource, ind.ThreatLevel)
			}
			others++
			continue
		}
		inTriage[ind.ID] = *ind
		byValue[ind.ThreatType+" "+strings.ToLower(ind.ThreatValue)]++
	}
	for v, n := range byValue {
		if n != 1 {
			t.Errorf("Triage holds %s %d times from %s", v, n, sample.Source)
		}
	}
	if want := len(sample.FromOtherSource()); others != want {
		t.Errorf("Triage holds %d indicators of another source; the simulator seeded %d", others, want)
	}
	if *seen == nil {
		*seen = triageSeen{}
		for _, ind := range sample.InTriage() {
			if got, ok := findValue(inTriage, ind.ThreatType, ind.ThreatValue); ok {
				(*seen)[got] = true
			}
		}
	}
	// Each Triage indicator is one result's: no two results of the run
	// name the same, and each names the one Triage holds for its value.
	ownExists := 0
	named := map[string]int64{}
	for _, rs := range res {
		r := rs[0]
		if r.Status != message.StatusCreated && r.Status != message.StatusExists {
			continue
		}
		if r.Triage == nil {
			t.Errorf("indicator %d: %s without a Triage indicator", r.Indicator.ID, r.Status)
			continue
		}
		held, ok := inTriage[r.Triage.ID]
		switch {
		case !ok:
			t.Errorf("indicator %d: %s as Triage %s, which Triage does not hold", r.Indicator.ID, r.Status, r.Triage.ID)
		case !strings.EqualFold(held.ThreatValue, r.Triage.ThreatValue):
			t.Errorf("indicator %d: %s as Triage %s (%q), which Triage holds for %q", r.Indicator.ID, r.Status, r.Triage.ID, r.Triage.ThreatValue, held.ThreatValue)
		}
		if other, dup := named[r.Triage.ID]; dup {
			t.Errorf("indicators %d and %d both answered with Triage %s", other, r.Indicator.ID, r.Triage.ID)
		}
		named[r.Triage.ID] = r.Indicator.ID
		if r.Status == message.StatusExists && !(*seen)[r.Triage.ID] {
			ownExists++
		}
	}
	if ownExists > 0 && !disrupted {
		t.Errorf("%d results answer exists for an indicator no earlier run nor the seed put in Triage, though no delivery was lost", ownExists)
	}
	for _, rs := range res {
		if r := rs[0]; r.Triage != nil && (r.Status == message.StatusCreated || r.Status == message.StatusExists) {
			(*seen)[r.Triage.ID] = true
		}
	}
	if len(inTriage) != len(*seen) {
		t.Errorf("Triage holds %d indicators from %s; the seed and the runs account for %d", len(inTriage), sample.Source, len(*seen))
	}

	// Every attribute on ThreatQ.
	var mu sync.Mutex
	var wg sync.WaitGroup
	work := make(chan message.Result)
	missing := 0
	for range 8 {
		wg.Go(func() {
			for r := range work {
				attrs, err := c.threatq.Attributes(ctx, r.Indicator.ID)
				mu.Lock()
				if err != nil {
					t.Errorf("indicator %d: %v", r.Indicator.ID, err)
				}
				for _, want := range r.Attributes {
					found := false
					for _, a := range attrs {
						found = found || (a.Name == want.Name && a.Value == want.Value)
					}
					if !found {
						missing++
						if missing <= 5 {
							t.Errorf("indicator %d: attribute %s=%q is not on ThreatQ (it has %v)", r.Indicator.ID, want.Name, want.Value, attrs)
						}
					}
				}
				mu.Unlock()
			}
		})
	}
	withAttrs, checked := 0, 0
	for _, rs := range res {
		if len(rs[0].Attributes) > 0 {
			withAttrs++
			checked += len(rs[0].Attributes)
			work <- rs[0]
		}
	}
	close(work)
	wg.Wait()
	if missing > 0 {
		t.Errorf("%d attributes missing on ThreatQ", missing)
	}

	// `tqtriage status`, from a container, as the viewer, agrees.
	code, out := c.once(ctx, c.roleEnv("viewer"), "status", id)
	if code != 0 || !strings.Contains(out, "; complete") {
		t.Errorf("status: exit %d, not complete%s", code, out)
	}
	got := map[message.Status]int{}
	for _, m := range statusCount.FindAllStringSubmatch(out, -1) {
		n, _ := strconv.Atoi(m[2])
		got[message.Status(m[1])] = n
	}
	for s, n := range counts {
		if got[s] != n {
			t.Errorf("status says %s %d; the results say %d%s", s, got[s], n, out)
		}
	}

	var line []string
	for _, s := range []message.Status{message.StatusCreated, message.StatusExists, message.StatusInvalid, message.StatusSkipped, message.StatusFailed} {
		line = append(line, fmt.Sprintf("%s %d", s, counts[s]))
	}
	t.Logf("run %s: %d jobs, complete in %v (%.0f jobs/s): %s (%d of the exists created by a lost delivery of this run); %d indicators written back, %d attributes found on ThreatQ; Triage holds %d",
		id, len(inds), took.Round(time.Millisecond), float64(len(inds))/took.Seconds(), strings.Join(line, ", "), ownExists, withAttrs, checked-missing, len(inTriage))
}

// findValue finds a Triage indicator by type and value.
func findValue(in map[string]triage.Indicator, typ, value string) (string, bool) {
	for id, ind := range in {
		if ind.ThreatType == typ && strings.EqualFold(ind.ThreatValue, value) {
			return id, true
		}
	}
	return "", false
}
