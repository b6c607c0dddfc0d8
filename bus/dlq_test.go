package bus

import (
	"errors"
	"testing"

	"github.com/tqtriage/tqtriage/message"
)

func TestReplayTargetsOfJobsIncludeTheDryRunSubject(t *testing.T) {
	job := []byte(`{"v":1,"run_id":"r-1","action":"create","indicator":{"id":5,"type":"MD5","value":"x"}}`)
	for _, c := range []struct {
		source, want string
	}{
		{"tqtriage.jobs.create", "tqtriage.jobs.create"},
		{"tqtriage.jobs.dryrun.create", "tqtriage.jobs.dryrun.create"},
		{"tqtriage.jobs.dryrun.update", ""},
		{"tqtriage.jobs.dryrun.>", ""},
		{"$JS.API.STREAM.PURGE.TQTRIAGE_RESULTS", ""},
	} {
		got, err := replayTarget(message.LettersCreate, DeadLetter{Source: c.source, Data: job})
		if got != c.want || (c.want == "") != errors.Is(err, errNotReplayable) {
			t.Errorf("source %q: target %q (%v), want %q", c.source, got, err, c.want)
		}
	}
}
