package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/prometheus/promql/parser"
	"go.yaml.in/yaml/v3"
)

// External metrics a dashboard or rule may use: Prometheus's own `up`,
// and the NATS server's exporter (prometheus-nats-exporter -varz).
var externalMetrics = []string{"up", "gnatsd_varz_connections", "gnatsd_varz_slow_consumers", "gnatsd_varz_in_msgs", "gnatsd_varz_out_msgs"}

// exported is every metric name the service's /metrics page has, with a
// histogram's _bucket, _sum and _count series.
func exported(t *testing.T) map[string]bool {
	names := map[string]bool{}
	for name, mf := range pipelineMetrics(t) {
		names[name] = true
		if mf.GetType() == dto.MetricType_HISTOGRAM {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				names[name+s] = true
			}
		}
	}
	for _, name := range externalMetrics {
		names[name] = true
	}
	return names
}

// Grafana's variables, as a value Prometheus would see.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h")

// metricsOf parses expr as PromQL and returns the metric names it selects.
func metricsOf(t *testing.T, where, expr string) []string {
	t.Helper()
	e, err := parser.NewParser(parser.Options{}).ParseExpr(grafanaVars.Replace(expr))
	if err != nil {
		t.Errorf("%s: %q does not parse: %v", where, expr, err)
		return nil
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			if vs.Name == "" {
				t.Errorf("%s: %q selects without a metric name", where, expr)
			}
			names = append(names, vs.Name)
		}
		return nil
	})
	if len(names) == 0 {
		t.Errorf("%s: %q uses no metric", where, expr)
	}
	return names
}

func TestDashboardUsesOnlyExportedMetrics(t *testing.T) {
	have := exported(t)
	data, err := os.ReadFile(filepath.Join("..", "deployments", "grafana", "tqtriage-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID, Title string
		Panels     []struct {
			Title   string
			Type    string
			Targets []struct{ Expr string }
		}
		Templating struct {
			List []struct {
				Name  string
				Query any
			}
		}
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	exprs := 0
	for _, p := range dash.Panels {
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			exprs++
			for _, name := range metricsOf(t, "panel "+p.Title, tg.Expr) {
				used[name] = true
				if !have[name] {
					t.Errorf("panel %q uses %s, which tqtriage does not export", p.Title, name)
				}
			}
		}
	}
	// The panels the issue asks for, each over its metric.
	for _, want := range []string{"tqtriage_messages_settled_total", "tqtriage_http_request_duration_seconds_bucket", "tqtriage_http_requests_total",
		"tqtriage_consumer_pending", "tqtriage_rate_limited_total", "tqtriage_dead_letters_total", "tqtriage_ready", "tqtriage_jobs_in_flight", "gnatsd_varz_connections"} {
		if !used[want] {
			t.Errorf("no panel shows %s", want)
		}
	}
	if dash.UID == "" || exprs < 15 {
		t.Errorf("dashboard %q: uid %q, %d queries", dash.Title, dash.UID, exprs)
	}
}

// ruleFile is Prometheus's rule file format, strictly.
type ruleFile struct {
	Groups []struct {
		Name     string `yaml:"name"`
		Interval string `yaml:"interval"`
		Rules    []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func TestAlertRulesParseAndUseOnlyExportedMetrics(t *testing.T) {
	have := exported(t)
	f, err := os.Open(filepath.Join("..", "deployments", "prometheus", "tqtriage-alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	dec.KnownFields(true)
	var rf ruleFile
	if err := dec.Decode(&rf); err != nil {
		t.Fatal(err)
	}
	alerts := map[string]bool{}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || r.Record != "" {
				t.Errorf("group %s: a rule that is not an alert: %+v", g.Name, r)
			}
			if alerts[r.Alert] {
				t.Errorf("alert %s twice", r.Alert)
			}
			alerts[r.Alert] = true
			if r.For != "" {
				if _, err := time.ParseDuration(r.For); err != nil {
					t.Errorf("alert %s: for %q: %v", r.Alert, r.For, err)
				}
			}
			if !slices.Contains([]string{"critical", "warning", "info"}, r.Labels["severity"]) || r.Annotations["summary"] == "" {
				t.Errorf("alert %s: severity %q, summary %q", r.Alert, r.Labels["severity"], r.Annotations["summary"])
			}
			for _, name := range metricsOf(t, "alert "+r.Alert, r.Expr) {
				if !have[name] {
					t.Errorf("alert %s uses %s, which tqtriage does not export", r.Alert, name)
				}
			}
			for _, text := range r.Annotations {
				if m := regexp.MustCompile(`\{\{[^}]*\}\}`).FindAllString(text, -1); len(m) > 0 && strings.Count(text, "{{") != strings.Count(text, "}}") {
					t.Errorf("alert %s: unbalanced template in %q", r.Alert, text)
				}
			}
		}
	}
	// The alerts the issue asks for.
	for _, want := range []string{"TqtriageJobsBacklogGrowing", "TqtriageFailureShareRising", "TqtriageDeadLetters", "TqtriageWritebackFallingBehind", "TqtriageReplicaNotReady"} {
		if !alerts[want] {
			t.Errorf("no alert %s", want)
		}
	}
}
