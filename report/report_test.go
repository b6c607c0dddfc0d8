package report

import (
	"bytes"
	"strings"
	"testing"

	"github.com/tqtriage/tqtriage/message"
)

func res(seq, id int64, s message.Status) message.Result {
	return message.Result{V: 1, Seq: seq, Indicator: message.Indicator{ID: id, Type: "MD5", Value: "x"}, Status: s, Reason: "because"}
}

func TestTallyCountsEachJobOnceWithItsLatestStatus(t *testing.T) {
	var tl Tally
	tl.Add(res(1, 11, message.StatusCreated), 1)
	tl.Add(res(3, 13, message.StatusFailed), 2)
	tl.Add(res(1, 11, message.StatusCreated), 3) // a repeat
	tl.Add(res(3, 13, message.StatusCreated), 4) // a replayed dead letter
	tl.Add(res(0, 99, message.StatusInvalid), 5) // a job without seq
	tl.Add(res(0, 99, message.StatusInvalid), 6)
	tl.Add(res(1000, 1000, message.StatusSkipped), 7)
	if tl.Done() != 4 || tl.Count(message.StatusCreated) != 2 || tl.Count(message.StatusFailed) != 0 ||
		tl.Count(message.StatusInvalid) != 1 || tl.Count(message.StatusSkipped) != 1 || tl.LastStreamSeq != 7 {
		t.Fatalf("tally %+v: done %d, counts %v", tl, tl.Done(), tl.Counts())
	}
	if got := tl.Line(5); got != "4/5 jobs: created 2, invalid 1, skipped 1" {
		t.Fatalf("Line = %q", got)
	}
	var b bytes.Buffer
	tl.Summary(&b, "create run r1", 5)
	if strings.Contains(b.String(), "failed") {
		t.Errorf("summary shows a failure that a replay has since answered:\n%s", b.String())
	}
	for _, want := range []string{"create run r1", "created     2", "invalid, for example:", "indicator 99 (MD5 \"x\"): because"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, b.String())
		}
	}
}
