package run

import (
	"strings"
	"testing"
	"time"
)

func TestProgressBarShowsShareRateETAAndCountsWithinTheTerminal(t *testing.T) {
	var out strings.Builder
	t0 := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	p := newProgress(FollowOptions{Progress: &out, Terminal: true, Width: 100}, t0)
	p.showAt(snapshot{done: 0, total: 300, published: true}, false, t0)
	p.showAt(snapshot{done: 100, total: 300, published: true, counts: "created 90, exists 10"}, false, t0.Add(4*time.Second))
	last := out.String()[strings.LastIndex(out.String(), "\r\033[K")+len("\r\033[K"):]
	want := "[========                ] 100/300  33%  25.0/s  ETA 8s: created 90, exists 10"
	if last != want {
		t.Errorf("bar\n%q, want\n%q", last, want)
	}

	// A narrow terminal: cut, never wrapped.
	narrow := newProgress(FollowOptions{Progress: &out, Terminal: true, Width: 40}, t0)
	if l := narrow.barLine(snapshot{done: 1, total: 2, published: true, counts: "created 1, exists 0, invalid 0, failed 0"}); len([]rune(l)) != 39 || !strings.HasSuffix(l, "…") {
		t.Errorf("on 40 columns: %q (%d columns)", l, len([]rune(l)))
	}

	// The rate is the last ten seconds': a run that slows shows it.
	for i := 1; i <= 20; i++ {
		p.showAt(snapshot{done: 100 + int64(i), total: 300, published: true}, false, t0.Add(4*time.Second+time.Duration(i)*time.Second))
	}
	if r := p.rate(); r < 0.9 || r > 1.1 {
		t.Errorf("rate %v after 20s at 1/s, want about 1", r)
	}
	if eta := p.eta(snapshot{done: 120, total: 300, published: true}); eta < 170*time.Second || eta > 190*time.Second {
		t.Errorf("ETA %v, want about 3m", eta)
	}
}

func TestProgressPlainLinesEverySoOftenWithWhatTheRunWaitsFor(t *testing.T) {
	var out strings.Builder
	t0 := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	p := newProgress(FollowOptions{Progress: &out, Every: 5 * time.Second}, t0)
	p.showAt(snapshot{done: 10, counts: "created 10"}, false, t0.Add(time.Second))
	p.showAt(snapshot{done: 20, counts: "created 20"}, false, t0.Add(2*time.Second)) // too soon: not shown
	p.showAt(snapshot{done: 60, total: 60, published: true, writing: 5, counts: "created 60"}, false, t0.Add(6*time.Second))
	p.showAt(snapshot{done: 60, total: 60, published: true, counts: "created 60"}, true, t0.Add(7*time.Second))
	want := "10 jobs, 10.0/s: created 10 (still publishing)\n" +
		"60/60 jobs (100%), 10.0/s: created 60 (writing back 5)\n" +
		"60/60 jobs (100%), 8.6/s: created 60\n"
	if out.String() != want {
		t.Errorf("lines\n%s\nwant\n%s", out.String(), want)
	}
	if strings.Contains(out.String(), "\r") || strings.Contains(out.String(), "\033") {
		t.Errorf("plain lines carry terminal controls: %q", out.String())
	}
}

func TestDurationString(t *testing.T) {
	for d, want := range map[time.Duration]string{
		8 * time.Second: "8s", 95 * time.Second: "1m35s", 3*time.Hour + 4*time.Minute + 5*time.Second: "3h04m",
	} {
		if got := durationString(d); got != want {
			t.Errorf("%v: %q, want %q", d, got, want)
		}
	}
}
