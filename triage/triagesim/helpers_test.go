package triagesim_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/tqtriage/tqtriage/triage/triagesim"
)

// env is a simulator behind a real HTTP server, with raw requests: these
// tests check the wire, so they do not go through the client.
type env struct {
	t   *testing.T
	sim *triagesim.Server
	srv *httptest.Server
}

func newEnv(t *testing.T, opts triagesim.Options) *env {
	sim := triagesim.New(opts)
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	return &env{t: t, sim: sim, srv: srv}
}

type reply struct {
	status int
	header http.Header
	body   []byte
}

func (r reply) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("status %d body %q: %v", r.status, r.body, err)
	}
	return m
}

// send makes one request; headers come as name, value pairs.
func (e *env) send(method, path, body string, header ...string) reply {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, e.srv.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return reply{resp.StatusCode, resp.Header, b}
}

// token obtains an access token with the default credentials.
func (e *env) token() string {
	e.t.Helper()
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {triagesim.DefaultClientID},
		"client_secret": {triagesim.DefaultClientSecret}}
	r := e.send(http.MethodPost, "/oauth/token", form.Encode(), "Content-Type", "application/x-www-form-urlencoded")
	if r.status != 200 {
		e.t.Fatalf("token: %d %s", r.status, r.body)
	}
	return r.json(e.t)["access_token"].(string)
}

// api sends an authorised JSON:API request.
func (e *env) api(token, method, path, body string) reply {
	e.t.Helper()
	h := []string{"Authorization", "Bearer " + token, "Accept", triagesim.MediaType}
	if body != "" {
		h = append(h, "Content-Type", triagesim.MediaType)
	}
	return e.send(method, "/api/public/v2"+path, body, h...)
}

func createBody(level, typ, value string) string {
	b, _ := json.Marshal(map[string]any{"data": map[string]any{"type": "threat_indicators", "attributes": map[string]string{
		"threat_level": level, "threat_type": typ, "threat_value": value, "threat_source": "test",
	}}})
	return string(b)
}

// shape is the set of key paths of a JSON value ("data.attributes.threat_level",
// "data[].id"): what two documents must share to have the same shape.
func shape(v any) []string {
	var out []string
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, child := range x {
				p := k
				if prefix != "" {
					p = prefix + "." + k
				}
				out = append(out, p)
				walk(p, child)
			}
		case []any:
			for _, child := range x {
				walk(prefix+"[]", child)
			}
		}
	}
	walk("", v)
	slices.Sort(out)
	return slices.Compact(out)
}

func shapeOf(t *testing.T, b []byte) []string {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	return shape(v)
}

// unwrapContext turns an XSOAR context fixture into the API document it was
// made from: {"Cofense":{"ThreatIndicator":X}} → {"data":X}.
func unwrapContext(t *testing.T, b []byte) []byte {
	t.Helper()
	var ctx struct {
		Cofense struct {
			ThreatIndicator json.RawMessage
		}
	}
	if err := json.Unmarshal(b, &ctx); err != nil || ctx.Cofense.ThreatIndicator == nil {
		t.Fatalf("not an XSOAR context document: %v", err)
	}
	out, _ := json.Marshal(map[string]json.RawMessage{"data": ctx.Cofense.ThreatIndicator})
	return out
}
