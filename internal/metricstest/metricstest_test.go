package metricstest

import (
	"strings"
	"testing"
)

const page = `# HELP req_total Requests.
# TYPE req_total counter
req_total{service="triage",code="201"} 17
req_total{service="triage",code="429"} 2
# HELP ready Ready.
# TYPE ready gauge
ready 1
# HELP took Duration.
# TYPE took histogram
took_bucket{le="1"} 3
took_bucket{le="+Inf"} 5
took_sum 2.5
took_count 5
`

func TestValueReadsEachKindBySubsetOfLabels(t *testing.T) {
	mfs, err := Parse(strings.NewReader(page))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"req_total", map[string]string{"code": "429"}, 2},
		{"req_total", map[string]string{"service": "triage", "code": "201"}, 17},
		{"req_total", nil, 17}, // the first series
		{"ready", nil, 1},
		{"took", nil, 5}, // a histogram's count
	} {
		got := Value(mfs, c.name, c.labels)
		if got == nil || *got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if v := Value(mfs, "req_total", map[string]string{"code": "500"}); v != nil {
		t.Errorf("a series that is not there: %v", *v)
	}
	if v := Value(mfs, "missing_total", nil); v != nil {
		t.Errorf("a family that is not there: %v", *v)
	}
}

func TestParseRefusesWhatIsNotTheTextFormat(t *testing.T) {
	if _, err := Parse(strings.NewReader("req_total{service=\"triage\" 17\n")); err == nil {
		t.Fatal("a broken page parsed")
	}
}
