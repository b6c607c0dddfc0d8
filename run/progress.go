package run

import (
	"fmt"
	"strings"
	"time"
)

// snapshot is what progress shows of a run at one moment.
type snapshot struct {
	done      int64 // jobs with a result
	total     int64 // known once published
	published bool
	writing   int    // results still to be written back, once every job has one (run)
	counts    string // "created 100, exists 20"
}

func snapshotOf(t *Tally, rec Record, writtenBack bool) snapshot {
	s := snapshot{done: int64(t.done), total: rec.Total, published: rec.Published, counts: t.CountsText()}
	if writtenBack && rec.Published && int64(t.done) >= rec.Total {
		s.writing = t.awaiting
	}
	return s
}

// progress shows a run's progress: on a terminal a bar redrawn in place
// (done/total, share, rate, time left, counts by status), otherwise a
// plain line every so often, for logs.
type progress struct {
	o         FollowOptions
	lastShown time.Time
	// rate is over the last rateWindow: a run that slows down (a rate
	// limit) shows it, where an average since the start would not.
	samples []sample
}

type sample struct {
	at   time.Time
	done int64
}

const rateWindow = 10 * time.Second

func newProgress(o FollowOptions, now time.Time) *progress {
	return &progress{o: o, samples: []sample{{now, 0}}}
}

func (p *progress) show(s snapshot, final bool) { p.showAt(s, final, time.Now()) }

func (p *progress) showAt(s snapshot, final bool, now time.Time) {
	p.samples = append(p.samples, sample{now, s.done})
	for len(p.samples) > 2 && now.Sub(p.samples[1].at) >= rateWindow {
		p.samples = p.samples[1:]
	}
	if p.o.Progress == nil {
		return
	}
	switch {
	case p.o.Terminal:
		fmt.Fprintf(p.o.Progress, "\r\033[K%s", p.barLine(s))
		if final {
			fmt.Fprintln(p.o.Progress)
		}
	case final || now.Sub(p.lastShown) >= p.o.Every:
		fmt.Fprintln(p.o.Progress, p.plainLine(s))
	default:
		return
	}
	p.lastShown = now
}

// rate is the jobs a second over the window, 0 when unknown.
func (p *progress) rate() float64 {
	first, last := p.samples[0], p.samples[len(p.samples)-1]
	d := last.at.Sub(first.at).Seconds()
	if d < 0.5 {
		return 0
	}
	return float64(last.done-first.done) / d
}

// eta is the time left at the current rate, 0 when unknown.
func (p *progress) eta(s snapshot) time.Duration {
	r := p.rate()
	if !s.published || r <= 0 || s.done >= s.total {
		return 0
	}
	return time.Duration(float64(s.total-s.done) / r * float64(time.Second))
}

const barCells = 24

func (p *progress) barLine(s snapshot) string {
	var b strings.Builder
	if s.published && s.total > 0 {
		filled := int(s.done * barCells / s.total)
		b.WriteString("[" + strings.Repeat("=", filled) + strings.Repeat(" ", barCells-filled) + "] ")
		fmt.Fprintf(&b, "%d/%d %3d%%", s.done, s.total, s.done*100/s.total)
	} else {
		fmt.Fprintf(&b, "%d jobs", s.done)
	}
	if r := p.rate(); r > 0 {
		fmt.Fprintf(&b, "  %s/s", rateString(r))
	}
	if eta := p.eta(s); eta > 0 {
		fmt.Fprintf(&b, "  ETA %s", durationString(eta))
	}
	b.WriteString(p.tail(s))
	return fit(b.String(), p.o.Width)
}

func (p *progress) plainLine(s snapshot) string {
	var b strings.Builder
	if s.published && s.total > 0 {
		fmt.Fprintf(&b, "%d/%d jobs (%d%%)", s.done, s.total, s.done*100/s.total)
	} else {
		fmt.Fprintf(&b, "%d jobs", s.done)
	}
	if r := p.rate(); r > 0 {
		fmt.Fprintf(&b, ", %s/s", rateString(r))
	}
	if eta := p.eta(s); eta > 0 {
		fmt.Fprintf(&b, ", about %s left", durationString(eta))
	}
	b.WriteString(p.tail(s))
	return b.String()
}

// tail is the counts by status and what the run still waits for.
func (p *progress) tail(s snapshot) string {
	t := ""
	if s.counts != "" {
		t = ": " + s.counts
	}
	switch {
	case !s.published:
		t += " (still publishing)"
	case s.writing > 0:
		t += fmt.Sprintf(" (writing back %d)", s.writing)
	}
	return t
}

// fit cuts a line to the terminal's width less one column: a line that
// fills or passes the last column wraps, and \r would then redraw only its
// last row. The line is ASCII (numbers and status names).
func fit(line string, width int) string {
	if width <= 0 {
		width = 80
	}
	if len(line) >= width {
		return line[:max(width-2, 0)] + "…"
	}
	return line
}

func rateString(r float64) string {
	if r >= 100 {
		return fmt.Sprintf("%.0f", r)
	}
	return fmt.Sprintf("%.1f", r)
}

func durationString(d time.Duration) string {
	d = d.Round(time.Second)
	if d < time.Minute {
		return fmt.Sprintf("%ds", int(d.Seconds()))
	}
	h, m, sec := int(d.Hours()), int(d.Minutes())%60, int(d.Seconds())%60
	if h > 0 {
		return fmt.Sprintf("%dh%02dm", h, m)
	}
	return fmt.Sprintf("%dm%02ds", m, sec)
}
