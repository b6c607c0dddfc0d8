package run

import (
	"github.com/tqtriage/tqtriage/message"
)

// Tally is the latest status of every job of a run seen so far, and
// whether write-back has settled its latest result. A repeated result (a
// redelivery past the duplicate window, a replayed dead letter) replaces
// the job's earlier one rather than adding to the count.
//
// Its memory is bounded whatever the results say: one byte per job, kept
// in pages that are made only when a result of their range comes (at most
// maxIndexedSeq jobs), plus a map entry for each job that came without a
// seq (at most maxNoSeq). A result beyond the run's jobs (seq over its
// highest, once known) or over those bounds is counted apart, not indexed.
type Tally struct {
	pages    []*page // (seq-1)/pageSize → the states of that range's jobs
	limit    int64   // the run's highest seq, once known (0: not yet)
	noSeq    map[int64]uint8
	counts   [16]int // by statusIndex
	done     int
	unread   int // results that did not parse
	apart    int // results beyond the run's jobs, not counted as jobs
	awaiting int // jobs whose latest result has no receipt yet
	wbFailed int // jobs whose latest result's write-back was dead-lettered
	stale    int // jobs whose latest result was older than one written since (a stale receipt)
	examples map[message.Status][]message.Result
	wbErrors []message.Receipt // a few dead-lettered write-backs
	dryRun   bool              // the run is a dry run (its record says so)
	reasons  reasons           // the first problems, grouped by reason (report.go)
	latency  *Latency          // told of each result, when the run's publishing was sampled
}

// statuses are every status in the order a summary prints them: an
// ordinary run's, with each of a dry run's beside what it stands for.
var statuses = []message.Status{
	message.StatusCreated, message.StatusWouldCreate, message.StatusExists,
	message.StatusUpdated, message.StatusWouldUpdate, message.StatusUnchanged,
	message.StatusNotFound, message.StatusInvalid, message.StatusSkipped, message.StatusFailed,
}

// Bounds of the index.
const (
	pageSize      = 4096
	maxIndexedSeq = 1 << 26 // 64 Mi jobs: 64 MiB of states at most
	maxNoSeq      = 1 << 18
)

type page [pageSize]uint8

// A job's state in one byte: the status of its latest result (1 + its
// index in statuses; 0: none yet), whether that result awaits its
// receipt, whether its write-back was dead-lettered, and whether it was
// left unwritten as older than a result of its indicator written since.
const (
	statusMask uint8 = 0x0f
	staleBit   uint8 = 0x20
	awaitBit   uint8 = 0x40
	wbFailBit  uint8 = 0x80
)

// maxExamples is how many results of each problem status a summary shows.
const maxExamples = 5

func statusIndex(s message.Status) uint8 {
	for i, v := range statuses {
		if v == s {
			return uint8(i + 1)
		}
	}
	return 0
}

// indexed reports whether the job of seq (0: none) has a place.
func (t *Tally) indexed(seq, id int64) bool {
	switch {
	case seq < 0:
		return false
	case seq == 0:
		_, known := t.noSeq[id]
		return known || len(t.noSeq) < maxNoSeq
	case t.limit > 0:
		return seq <= t.limit && seq <= maxIndexedSeq
	}
	return seq <= maxIndexedSeq
}

// get is the state of the job of seq (or, without a seq, of indicator id).
func (t *Tally) get(seq, id int64) uint8 {
	if seq <= 0 {
		return t.noSeq[id]
	}
	i, o := (seq-1)/pageSize, (seq-1)%pageSize
	if i >= int64(len(t.pages)) || t.pages[i] == nil {
		return 0
	}
	return t.pages[i][o]
}

func (t *Tally) set(seq, id int64, v uint8) {
	if seq <= 0 {
		if t.noSeq == nil {
			t.noSeq = map[int64]uint8{}
		}
		t.noSeq[id] = v
		return
	}
	i, o := (seq-1)/pageSize, (seq-1)%pageSize
	if i >= int64(len(t.pages)) {
		t.pages = append(t.pages, make([]*page, i+1-int64(len(t.pages)))...)
	}
	if t.pages[i] == nil {
		t.pages[i] = new(page)
	}
	t.pages[i][o] = v
}

// SetLimit tells the tally the run's highest seq, once its publishing has
// ended: results of a higher seq are not the run's jobs. Those counted
// before it was known are moved apart.
func (t *Tally) SetLimit(maxSeq int64) {
	if maxSeq <= 0 || t.limit == maxSeq {
		return
	}
	t.limit = maxSeq
	for i := maxSeq / pageSize; i < int64(len(t.pages)); i++ {
		p := t.pages[i]
		if p == nil {
			continue
		}
		for o, v := range p {
			if i*pageSize+int64(o)+1 <= maxSeq || v&statusMask == 0 {
				continue
			}
			t.forget(v)
			p[o] = 0
		}
	}
}

// forget takes a job of state v out of the counts and counts it apart.
func (t *Tally) forget(v uint8) {
	t.done--
	t.counts[v&statusMask]--
	if v&awaitBit != 0 {
		t.awaiting--
	}
	if v&wbFailBit != 0 {
		t.wbFailed--
	}
	if v&staleBit != 0 {
		t.stale--
	}
	t.apart++
}

// Add counts one result.
func (t *Tally) Add(r message.Result) {
	idx := statusIndex(r.Status)
	if idx == 0 {
		t.unread++
		return
	}
	if !t.indexed(r.Seq, r.Indicator.ID) {
		t.apart++
		return
	}
	prev := t.get(r.Seq, r.Indicator.ID)
	if prev&statusMask == 0 {
		t.done++
	} else {
		t.counts[prev&statusMask]--
	}
	if prev&awaitBit == 0 {
		t.awaiting++
	}
	t.counts[idx]++
	// The new result awaits its own receipt; a failed or stale
	// write-back of an earlier one stays counted until this one is
	// settled.
	t.set(r.Seq, r.Indicator.ID, idx|awaitBit|prev&(wbFailBit|staleBit))
	t.reasons.add(r)
	t.latency.Answered(r)
	switch r.Status {
	case message.StatusFailed, message.StatusInvalid, message.StatusSkipped, message.StatusNotFound, message.StatusWouldUpdate:
		if t.examples == nil {
			t.examples = map[message.Status][]message.Result{}
		}
		if len(t.examples[r.Status]) < maxExamples {
			t.examples[r.Status] = append(t.examples[r.Status], r)
		}
	}
}

// AddReceipt counts write-back's receipt for a job's result.
func (t *Tally) AddReceipt(rc message.Receipt) {
	if rc.Seq < 0 {
		return
	}
	v := t.get(rc.Seq, rc.Indicator)
	if v&statusMask == 0 {
		return // no result of this job was read: not ours to count
	}
	if v&awaitBit != 0 {
		t.awaiting--
		v &^= awaitBit
	}
	failed := rc.Outcome == message.ReceiptDeadLettered
	switch {
	case failed && v&wbFailBit == 0:
		t.wbFailed++
		v |= wbFailBit
	case !failed && v&wbFailBit != 0:
		t.wbFailed--
		v &^= wbFailBit
	}
	if failed && len(t.wbErrors) < maxExamples {
		t.wbErrors = append(t.wbErrors, rc)
	}
	// Stale is settled, not failed: a later result's attributes stand.
	stale := rc.Outcome == message.ReceiptStale
	switch {
	case stale && v&staleBit == 0:
		t.stale++
		v |= staleBit
	case !stale && v&staleBit != 0:
		t.stale--
		v &^= staleBit
	}
	t.set(rc.Seq, rc.Indicator, v)
}

// AddUnreadable counts a stored result that could not be parsed.
func (t *Tally) AddUnreadable() { t.unread++ }

// Done is the number of jobs with a result.
func (t *Tally) Done() int { return t.done }

// AwaitingWriteback is the number of jobs whose latest result write-back
// has not settled yet.
func (t *Tally) AwaitingWriteback() int { return t.awaiting }

// WritebackFailures is the number of jobs whose latest result could not
// be written to ThreatQ (dead-lettered on tqtriage.dlq.writeback).
func (t *Tally) WritebackFailures() int { return t.wbFailed }

// Superseded is the number of jobs whose latest result write-back left
// unwritten, because a result of the same ThreatQ indicator answered
// later had been written already (a stale receipt).
func (t *Tally) Superseded() int { return t.stale }

// Count is the number of jobs whose latest result has status s.
func (t *Tally) Count(s message.Status) int { return t.counts[statusIndex(s)] }

// Apart is the number of results that name no job of the run (a seq over
// its highest), counted apart.
func (t *Tally) Apart() int { return t.apart }

// Unreadable is the number of stored results that did not parse.
func (t *Tally) Unreadable() int { return t.unread }

// latest is the latest status of r's job.
func (t *Tally) latest(r message.Result) message.Status {
	if r.Seq < 0 {
		return ""
	}
	v := t.get(r.Seq, r.Indicator.ID)
	if v&statusMask == 0 {
		return ""
	}
	return statuses[v&statusMask-1]
}

// Counts returns the non-zero counts by status, in a summary's order.
func (t *Tally) Counts() []StatusCount {
	var out []StatusCount
	for _, s := range statuses {
		if n := t.Count(s); n > 0 {
			out = append(out, StatusCount{s, n})
		}
	}
	return out
}

// StatusCount is one line of a summary.
type StatusCount struct {
	Status message.Status `json:"status"`
	Count  int            `json:"count"`
}
