package triagesim_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/oauth2"

	"github.com/tqtriage/tqtriage/internal/fixture"
	"github.com/tqtriage/tqtriage/triage"
	"github.com/tqtriage/tqtriage/triage/internal/wire"
	"github.com/tqtriage/tqtriage/triage/triagesim"
)

// TestFixturesDecodeWithClientTypes decodes every recorded body with the
// types the client decodes with. A new fixture file must be added here.
func TestFixturesDecodeWithClientTypes(t *testing.T) {
	decodeOne := func(t *testing.T, b []byte) *wire.Indicator {
		var doc wire.Document
		if err := json.Unmarshal(b, &doc); err != nil {
			t.Fatal(err)
		}
		in, err := doc.Data.Indicator()
		if err != nil {
			t.Fatal(err)
		}
		if in.ID == "" || in.ThreatLevel == "" || in.ThreatType == "" || in.ThreatValue == "" || in.CreatedAt.IsZero() || in.UpdatedAt.IsZero() {
			t.Fatalf("decoded %+v", in)
		}
		return in
	}
	decodeList := func(t *testing.T, b []byte) ([]*wire.Indicator, wire.Links) {
		var doc wire.ListDocument
		if err := json.Unmarshal(b, &doc); err != nil {
			t.Fatal(err)
		}
		var out []*wire.Indicator
		for _, r := range doc.Data {
			in, err := r.Indicator()
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, in)
		}
		return out, doc.Links
	}
	errorOf := func(t *testing.T, status int, b []byte) *triage.Error {
		var e *triage.Error
		if err := triage.CheckResponse(&http.Response{StatusCode: status, Header: http.Header{}}, b, "GET", "/x"); !errors.As(err, &e) {
			t.Fatalf("CheckResponse: %v", err)
		}
		return e
	}

	checks := map[string]func(t *testing.T, b []byte){
		"xsoar_v3_threat_indicators_command_response.json": func(t *testing.T, b []byte) {
			if in := decodeOne(t, b); in.ID != "298" || in.ThreatValue != "http://example.com/carolann" {
				t.Fatalf("%+v", in)
			}
		},
		"splunk_soar_create_response_RECONSTRUCTED.json": func(t *testing.T, b []byte) {
			if in := decodeOne(t, b); in.ID != "209" || in.ThreatLevel != "Suspicious" {
				t.Fatalf("%+v", in)
			}
		},
		"xsoar_v3_readme_create_hostname_context.json": func(t *testing.T, b []byte) {
			if in := decodeOne(t, unwrapContext(t, b)); in.ThreatType != "Hostname" || in.ThreatValue != "abc.com" {
				t.Fatalf("%+v", in)
			}
		},
		"xsoar_v3_readme_list_context.json": func(t *testing.T, b []byte) {
			ins, _ := decodeList(t, unwrapContext(t, b))
			if len(ins) != 2 || ins[0].ThreatType != "SHA256" || ins[1].ThreatType != "URL" {
				t.Fatalf("%+v", ins)
			}
		},
		"sdk_threat_indicators_list.json": func(t *testing.T, b []byte) {
			ins, links := decodeList(t, b)
			if len(ins) != 1 || ins[0].ThreatType != "Sender" || links.Next != "" {
				t.Fatalf("%+v %+v", ins, links)
			}
		},
		"xsoar_v3_reports_list_with_pagination_links.json": func(t *testing.T, b []byte) {
			var doc wire.ListDocument
			if err := json.Unmarshal(b, &doc); err != nil {
				t.Fatal(err)
			}
			if !strings.HasSuffix(doc.Links.Next, "?page%5Bnumber%5D=2&page%5Bsize%5D=2") || doc.Links.First == "" || doc.Links.Last == "" {
				t.Fatalf("links %+v", doc.Links)
			}
			// Reports are not indicators: the client must say so, not
			// make empty indicators of them.
			if _, err := doc.Data[0].Indicator(); err == nil {
				t.Fatal("a report decoded as a threat indicator")
			}
		},
		"xsoar_v3_test_404_error.json": func(t *testing.T, b []byte) {
			if e := errorOf(t, 404, b); e.Kind != triage.KindNotFound || e.Messages[0] != "The record identified by -1 could not be found." {
				t.Fatalf("%+v", e)
			}
		},
		"xsoar_v3_test_422_error.json": func(t *testing.T, b []byte) {
			if e := errorOf(t, 422, b); e.Kind != triage.KindValidation || len(e.Messages) != 2 {
				t.Fatalf("%+v", e)
			}
		},
		"xsoar_v3_test_oauth_token_response.json": func(t *testing.T, b []byte) {
			var tok oauth2.Token
			if err := json.Unmarshal(b, &tok); err != nil || tok.AccessToken != "dummy_token" || tok.ExpiresIn != 7200 || tok.Type() != "Bearer" {
				t.Fatalf("%+v %v", tok, err)
			}
		},
	}

	dir := fixture.Dir(t, "triage")
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no fixtures in %s (%v): they must be in the repository", dir, err)
	}
	for _, f := range files {
		name := filepath.Base(f)
		check, ok := checks[name]
		if !ok {
			t.Errorf("fixture %s is not checked: add it to this test", name)
			continue
		}
		t.Run(name, func(t *testing.T) { check(t, fixture.Read(t, "triage", name)) })
	}
}

// TestAnswersHaveTheFixturesShape compares the key paths of the
// simulator's answers with those of the recorded bodies.
func TestAnswersHaveTheFixturesShape(t *testing.T) {
	e := newEnv(t, triagesim.Options{})
	tok := e.token()

	// Token: exactly Doorkeeper's keys.
	form := "grant_type=client_credentials&client_id=" + triagesim.DefaultClientID + "&client_secret=" + triagesim.DefaultClientSecret
	tr := e.send(http.MethodPost, "/oauth/token", form, "Content-Type", "application/x-www-form-urlencoded")
	sameShape(t, "token", shapeOf(t, tr.body), shapeOf(t, fixture.Read(t, "triage", "xsoar_v3_test_oauth_token_response.json")))

	// A created indicator: the fixture of create/get, key for key.
	created := e.api(tok, http.MethodPost, "/threat_indicators", createBody("Benign", "URL", "http://example.com/carolann"))
	if created.status != http.StatusCreated {
		t.Fatalf("create: %d %s", created.status, created.body)
	}
	want := shapeOf(t, fixture.Read(t, "triage", "xsoar_v3_threat_indicators_command_response.json"))
	sameShape(t, "create", shapeOf(t, created.body), want)
	got := e.api(tok, http.MethodGet, "/threat_indicators/1", "")
	sameShape(t, "get", shapeOf(t, got.body), want)
	upd := e.api(tok, http.MethodPut, "/threat_indicators/1", `{"data":{"id":"1","type":"threat_indicators","attributes":{"threat_level":"Malicious"}}}`)
	sameShape(t, "update", shapeOf(t, upd.body), want)

	// Values: id a string, timestamps in milliseconds with Z, links absolute.
	var doc struct {
		Data struct {
			ID         any               `json:"id"`
			Links      map[string]string `json:"links"`
			Attributes map[string]any    `json:"attributes"`
		}
	}
	if err := json.Unmarshal(created.body, &doc); err != nil {
		t.Fatal(err)
	}
	if id, ok := doc.Data.ID.(string); !ok || id != "1" {
		t.Fatalf("id %#v, want the string \"1\"", doc.Data.ID)
	}
	for _, k := range []string{"created_at", "updated_at"} {
		s, _ := doc.Data.Attributes[k].(string)
		if len(s) != len("2021-05-14T07:24:48.886Z") || !strings.HasSuffix(s, "Z") || s[19] != '.' {
			t.Fatalf("%s %q", k, s)
		}
	}
	if doc.Data.Links["self"] != e.srv.URL+"/api/public/v2/threat_indicators/1" {
		t.Fatalf("self link %q", doc.Data.Links["self"])
	}

	// A page among several: the list fixtures' items and paginator links.
	for i := range 4 {
		e.api(tok, http.MethodPost, "/threat_indicators", createBody("Benign", "Hostname", "host"+string(rune('a'+i))+".example"))
	}
	page := e.api(tok, http.MethodGet, "/threat_indicators?page%5Bnumber%5D=1&page%5Bsize%5D=2", "")
	listed := shapeOf(t, page.body)
	items := shapeOf(t, unwrapContext(t, fixture.Read(t, "triage", "xsoar_v3_readme_list_context.json")))
	sameShape(t, "list items", filterPrefix(listed, "data"), filterPrefix(items, "data"))
	sameShape(t, "list links", filterPrefix(listed, "links"),
		filterPrefix(shapeOf(t, fixture.Read(t, "triage", "xsoar_v3_reports_list_with_pagination_links.json")), "links"))

	// Errors carry at least the fixtures' keys.
	nf := e.api(tok, http.MethodGet, "/threat_indicators/999", "")
	contains(t, "404", shapeOf(t, nf.body), shapeOf(t, fixture.Read(t, "triage", "xsoar_v3_test_404_error.json")))
	inv := e.api(tok, http.MethodPost, "/threat_indicators", `{"data":{"type":"threat_indicators","attributes":{"threat_level":"Benign"}}}`)
	contains(t, "422", shapeOf(t, inv.body), shapeOf(t, fixture.Read(t, "triage", "xsoar_v3_test_422_error.json")))
}

func filterPrefix(paths []string, prefix string) []string {
	var out []string
	for _, p := range paths {
		if p == prefix || strings.HasPrefix(p, prefix+".") || strings.HasPrefix(p, prefix+"[]") {
			out = append(out, p)
		}
	}
	return out
}

func sameShape(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s: keys\n  %v\nwant\n  %v", what, got, want)
	}
}

func contains(t *testing.T, what string, got, want []string) {
	t.Helper()
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("%s: key %s missing from %v", what, w, got)
		}
	}
}
