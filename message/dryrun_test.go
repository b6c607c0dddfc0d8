package message

import (
	"errors"
	"strings"
	"testing"
)

func TestDryRunJobsAreTheirSubjectsWhateverTheirField(t *testing.T) {
	job := func(dry string) []byte {
		return []byte(`{"v":1,"run_id":"r-1","action":"create","indicator":{"id":5,"type":"MD5","value":"x"}` + dry + `}`)
	}
	for _, c := range []struct {
		subject, field string
		dry            bool
	}{
		{"tqtriage.jobs.dryrun.create", `,"dry_run":true`, true},
		{"tqtriage.jobs.dryrun.create", ``, true},                 // the subject says dry
		{"tqtriage.jobs.dryrun.create", `,"dry_run":false`, true}, // and the field cannot unsay it
		{"tqtriage.jobs.create", `,"dry_run":true`, true},         // a field that asks for less is honoured
		{"tqtriage.jobs.create", ``, false},
	} {
		j, err := ParseJob(c.subject, job(c.field))
		if err != nil || j.DryRun != c.dry {
			t.Errorf("%s %s: dry run %v (%v), want %v", c.subject, c.field, j.DryRun, err, c.dry)
		}
		if r := NewResult(j, StatusWouldCreate, ""); r.DryRun != c.dry {
			t.Errorf("%s %s: the result's dry_run is %v", c.subject, c.field, r.DryRun)
		}
	}
	var pe *ParseError
	if _, err := ParseJob("tqtriage.jobs.dryrun.update", job("")); !errors.As(err, &pe) {
		t.Errorf("a create job on the dry-run update subject parsed: %v", err)
	}
	if DryRunJobSubject(ActionUpdate) != "tqtriage.jobs.dryrun.update" || !strings.HasPrefix(DryRunJobSubject(ActionCreate), JobsPrefix) {
		t.Errorf("dry-run subjects %s, %s", DryRunJobSubject(ActionCreate), DryRunJobSubject(ActionUpdate))
	}
	// A worker of before dry runs checked the subject as this one does for
	// an ordinary job: a dry-run subject is not its action's subject, so
	// such a worker refuses the job instead of working it for real.
	if DryRunJobSubject(ActionCreate) == JobSubject(ActionCreate) {
		t.Error("a dry-run job would pass for a real one")
	}
}

func TestDryRunStatusesBelongToDryRunResultsOnly(t *testing.T) {
	res := func(status string, dry bool) []byte {
		d := ""
		if dry {
			d = `,"dry_run":true`
		}
		return []byte(`{"v":1,"run_id":"r","action":"create","indicator":{"id":1},"status":"` + status + `","reason":"","attempts":1` + d + `}`)
	}
	for _, c := range []struct {
		status string
		dry    bool
		ok     bool
	}{
		{"would_create", true, true}, {"would_update", true, true}, {"unchanged", true, true},
		{"exists", true, true}, {"not_found", true, true}, {"invalid", true, true}, {"skipped", true, true}, {"failed", true, true},
		{"would_create", false, false}, {"unchanged", false, false},
		{"created", true, false}, {"updated", true, false},
		{"created", false, true},
	} {
		r, err := ParseResult(res(c.status, c.dry))
		if (err == nil) != c.ok {
			t.Errorf("status %s, dry run %v: err %v, want ok %v", c.status, c.dry, err, c.ok)
		}
		if err == nil && (string(r.Status) != c.status || r.DryRun != c.dry) {
			t.Errorf("parsed %+v", r)
		}
	}
}
