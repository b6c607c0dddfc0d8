package triage_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/tqtriage/tqtriage/internal/fixture"
	"github.com/tqtriage/tqtriage/triage"
)

// TestClientReadsRecordedBodies serves the public fixtures, byte for byte,
// and reads them through the whole client: token grant, create, get, list.
func TestClientReadsRecordedBodies(t *testing.T) {
	read := func(name string) []byte { return fixture.Read(t, "triage", name) }
	serve := func(status int, ct string, body []byte) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", ct)
			w.WriteHeader(status)
			_, _ = w.Write(body)
		}
	}
	mux := http.NewServeMux()
	mux.Handle("POST /oauth/token", serve(200, "application/json; charset=utf-8", read("xsoar_v3_test_oauth_token_response.json")))
	mux.Handle("POST /api/public/v2/threat_indicators", serve(201, triage.MediaType, read("splunk_soar_create_response_RECONSTRUCTED.json")))
	mux.Handle("GET /api/public/v2/threat_indicators/298", serve(200, triage.MediaType, read("xsoar_v3_threat_indicators_command_response.json")))
	mux.Handle("GET /api/public/v2/threat_indicators", serve(200, triage.MediaType, read("sdk_threat_indicators_list.json")))
	mux.Handle("PUT /api/public/v2/threat_indicators/1", serve(422, triage.MediaType, read("xsoar_v3_test_422_error.json")))
	mux.Handle("GET /api/public/v2/threat_indicators/-1", serve(404, triage.MediaType, read("xsoar_v3_test_404_error.json")))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	c, err := triage.New(context.Background(), triage.Config{BaseURL: srv.URL, ClientID: "id", ClientSecret: "secret"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	created, err := c.CreateIndicator(ctx, triage.NewIndicator{ThreatLevel: "Suspicious", ThreatType: "URL", ThreatValue: "https://exampleurl.com"})
	if err != nil {
		t.Fatal(err)
	}
	want := triage.Indicator{ID: "209", ThreatLevel: "Suspicious", ThreatType: "URL", ThreatValue: "https://exampleurl.com",
		ThreatSource: "Splunk_Phantom-UI", CreatedAt: ms("2021-03-31T05:13:14.368Z"), UpdatedAt: ms("2021-03-31T05:13:14.368Z")}
	if *created != want {
		t.Fatalf("created %+v\nwant    %+v", created, want)
	}

	got, err := c.GetIndicator(ctx, "298")
	if err != nil {
		t.Fatal(err)
	}
	want = triage.Indicator{ID: "298", ThreatLevel: "Benign", ThreatType: "URL", ThreatValue: "http://example.com/carolann",
		ThreatSource: "Generic Threat Intel", CreatedAt: ms("2021-05-14T07:24:48.886Z"), UpdatedAt: ms("2021-05-14T07:24:48.886Z")}
	if *got != want {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}

	var listed []*triage.Indicator
	for in, err := range c.ListIndicators(ctx, triage.ListOptions{}) {
		if err != nil {
			t.Fatal(err)
		}
		listed = append(listed, in)
	}
	if len(listed) != 1 || listed[0].ThreatType != "Sender" || listed[0].ThreatValue != "zoe.watts@example.org" ||
		listed[0].UpdatedAt != ms("2020-09-23T08:32:12.307Z") {
		t.Fatalf("listed %+v", listed)
	}

	_, err = c.UpdateIndicator(ctx, "1", "Benign", "")
	te := requireKind(t, err, triage.ErrValidation)
	if len(te.Messages) != 2 || te.Messages[0] != "threat_key - can't be blank" {
		t.Fatalf("messages %q", te.Messages)
	}
	_, err = c.GetIndicator(ctx, "-1")
	requireKind(t, err, triage.ErrNotFound)
}

func ms(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return t
}
