package triagesim_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tqtriage/tqtriage/triage/triagesim"
)

// firstError is the first JSON:API error object of an answer.
func firstError(t *testing.T, r reply) map[string]any {
	t.Helper()
	errs, _ := r.json(t)["errors"].([]any)
	if len(errs) == 0 {
		t.Fatalf("status %d body %s: no errors", r.status, r.body)
	}
	return errs[0].(map[string]any)
}

func TestTokenEndpoint(t *testing.T) {
	e := newEnv(t, triagesim.Options{TokenLifetime: 90 * time.Second})
	form := func(v url.Values) string { return v.Encode() }
	good := url.Values{"grant_type": {"client_credentials"}, "client_id": {triagesim.DefaultClientID}, "client_secret": {triagesim.DefaultClientSecret}}
	formCT := []string{"Content-Type", "application/x-www-form-urlencoded"}

	before := time.Now().Unix()
	r := e.send(http.MethodPost, "/oauth/token", form(good), formCT...)
	m := r.json(t)
	if r.status != 200 || m["token_type"] != "Bearer" || m["expires_in"] != 90.0 || len(m["access_token"].(string)) < 32 ||
		int64(m["created_at"].(float64)) < before || r.header.Get("Cache-Control") != "no-store" {
		t.Fatalf("grant: %d %v %v", r.status, m, r.header)
	}

	// HTTP Basic is as good as the form.
	basic := e.send(http.MethodPost, "/oauth/token", "grant_type=client_credentials", append(formCT,
		"Authorization", "Basic "+basicAuth(triagesim.DefaultClientID, triagesim.DefaultClientSecret))...)
	if basic.status != 200 {
		t.Fatalf("basic: %d %s", basic.status, basic.body)
	}

	refusals := []struct {
		name   string
		edit   func(url.Values)
		status int
		code   string
	}{
		{"wrong secret", func(v url.Values) { v.Set("client_secret", "nope") }, 401, "invalid_client"},
		{"wrong id", func(v url.Values) { v.Set("client_id", "nope") }, 401, "invalid_client"},
		{"no credentials", func(v url.Values) { v.Del("client_id"); v.Del("client_secret") }, 401, "invalid_client"},
		{"no grant type", func(v url.Values) { v.Del("grant_type") }, 400, "invalid_request"},
		{"password grant", func(v url.Values) { v.Set("grant_type", "password") }, 400, "unsupported_grant_type"},
	}
	for _, tc := range refusals {
		v := url.Values{}
		for k, vs := range good {
			v[k] = append([]string(nil), vs...)
		}
		tc.edit(v)
		r := e.send(http.MethodPost, "/oauth/token", form(v), formCT...)
		if r.status != tc.status || r.json(t)["error"] != tc.code {
			t.Errorf("%s: %d %s, want %d %s", tc.name, r.status, r.body, tc.status, tc.code)
		}
	}
	if r := e.send(http.MethodGet, "/oauth/token", ""); r.status != 404 {
		t.Errorf("GET /oauth/token: %d", r.status)
	}
	st := e.sim.Stats()
	if st.TokenGrants != 2 || st.TokenRefusals != int64(len(refusals)) {
		t.Fatalf("stats %+v", st)
	}
}

func basicAuth(id, secret string) string {
	r, _ := http.NewRequest("GET", "/", nil)
	r.SetBasicAuth(id, secret)
	return strings.TrimPrefix(r.Header.Get("Authorization"), "Basic ")
}

func TestBearerTokenIsRequired(t *testing.T) {
	e := newEnv(t, triagesim.Options{})
	tok := e.token()
	cases := []struct {
		name, auth, why string
	}{
		{"missing", "", "The access token is invalid"},
		{"lowercase bearer", "bearer " + tok, "The access token is invalid"},
		{"basic", "Basic " + tok, "The access token is invalid"},
		{"unknown token", "Bearer not-a-token", "The access token is invalid"},
	}
	for _, tc := range cases {
		h := []string{"Accept", triagesim.MediaType}
		if tc.auth != "" {
			h = append(h, "Authorization", tc.auth)
		}
		r := e.send(http.MethodGet, "/api/public/v2/threat_indicators", "", h...)
		want := `Bearer realm="Doorkeeper", error="invalid_token", error_description="` + tc.why + `"`
		if r.status != 401 || len(r.body) != 0 || r.header.Get("WWW-Authenticate") != want {
			t.Errorf("%s: %d %q %q", tc.name, r.status, r.body, r.header.Get("WWW-Authenticate"))
		}
	}
	if r := e.api(tok, http.MethodGet, "/threat_indicators", ""); r.status != 200 {
		t.Fatalf("good token: %d %s", r.status, r.body)
	}

	e.sim.ExpireTokens()
	r := e.api(tok, http.MethodGet, "/threat_indicators", "")
	if r.status != 401 || !strings.Contains(r.header.Get("WWW-Authenticate"), `error_description="The access token expired"`) {
		t.Fatalf("expired: %d %v", r.status, r.header)
	}
	tok2 := e.token()
	if r := e.api(tok2, http.MethodGet, "/threat_indicators", ""); r.status != 200 {
		t.Fatalf("a token granted after ExpireTokens: %d", r.status)
	}
	e.sim.RevokeTokens()
	if r := e.api(tok2, http.MethodGet, "/threat_indicators", ""); r.status != 401 ||
		!strings.Contains(r.header.Get("WWW-Authenticate"), "was revoked") {
		t.Fatalf("revoked: %d %v", r.status, r.header)
	}
	if st := e.sim.Stats(); st.Unauthorized != int64(len(cases))+2 {
		t.Fatalf("401s counted %d", st.Unauthorized)
	}
}

func TestTokenLifetimeEndsTokens(t *testing.T) {
	e := newEnv(t, triagesim.Options{TokenLifetime: 300 * time.Millisecond})
	tok := e.token()
	if r := e.api(tok, http.MethodGet, "/system/status", ""); r.status != 200 {
		t.Fatalf("fresh token: %d", r.status)
	}
	time.Sleep(350 * time.Millisecond) // the lifetime itself is what is tested
	r := e.api(tok, http.MethodGet, "/system/status", "")
	if r.status != 401 || !strings.Contains(r.header.Get("WWW-Authenticate"), "expired") {
		t.Fatalf("after its lifetime: %d %v", r.status, r.header)
	}
}

func TestStrictness(t *testing.T) {
	e := newEnv(t, triagesim.Options{})
	tok := e.token()
	seeded, err := e.sim.Seed(triagesim.Indicator{ThreatLevel: "Benign", ThreatType: "MD5", ThreatValue: "d41d8cd98f00b204e9800998ecf8427e"})
	if err != nil {
		t.Fatal(err)
	}
	id := seeded[0].ID
	auth := []string{"Authorization", "Bearer " + tok}
	with := func(h ...string) []string { return append(append([]string(nil), auth...), h...) }
	valid := createBody("Malicious", "SHA256", strings.Repeat("a", 64))
	update := func(id string, attrs string) string {
		return `{"data":{"id":"` + id + `","type":"threat_indicators","attributes":` + attrs + `}}`
	}

	cases := []struct {
		name         string
		method, path string
		body         string
		header       []string
		status       int
		title        string // of the first error, when there is a body
		detail       string
	}{
		{"create as application/json", "POST", "/threat_indicators", valid, with("Content-Type", "application/json"), 415, "Unsupported media type", ""},
		{"create without content type", "POST", "/threat_indicators", valid, with(), 415, "Unsupported media type", ""},
		{"create with media type parameters", "POST", "/threat_indicators", valid, with("Content-Type", triagesim.MediaType+"; charset=utf-8"), 415, "Unsupported media type", ""},
		{"accept html only", "GET", "/threat_indicators", "", with("Accept", "text/html"), 406, "Not acceptable", ""},
		{"accept with parameters", "GET", "/threat_indicators", "", with("Accept", triagesim.MediaType+"; ext=x"), 406, "Not acceptable", ""},
		{"accept wildcard", "GET", "/threat_indicators", "", with("Accept", "text/html, */*;q=0.1"), 200, "", ""},
		{"lowercase level", "POST", "/threat_indicators", createBody("malicious", "SHA256", "abc"), with("Content-Type", triagesim.MediaType), 422, "is not included in the list", "threat_level - is not included in the list"},
		{"lowercase type", "POST", "/threat_indicators", createBody("Malicious", "sha256", "abc"), with("Content-Type", triagesim.MediaType), 422, "is not included in the list", "threat_type - is not included in the list"},
		{"FQDN is not a Triage type", "POST", "/threat_indicators", createBody("Malicious", "FQDN", "a.example"), with("Content-Type", triagesim.MediaType), 422, "is not included in the list", "threat_type - is not included in the list"},
		{"short value", "POST", "/threat_indicators", createBody("Malicious", "Hostname", "ab"), with("Content-Type", triagesim.MediaType), 422, "is too short (minimum is 3 characters)", "threat_value - is too short (minimum is 3 characters)"},
		{"missing attributes", "POST", "/threat_indicators", `{"data":{"type":"threat_indicators","attributes":{}}}`, with("Content-Type", triagesim.MediaType), 422, "can't be blank", "threat_level - can't be blank"},
		{"wrong type", "POST", "/threat_indicators", `{"data":{"type":"reports","attributes":{}}}`, with("Content-Type", triagesim.MediaType), 400, "Invalid resource", "reports is not a valid resource."},
		{"no data", "POST", "/threat_indicators", `{}`, with("Content-Type", triagesim.MediaType), 400, "Missing Parameter", "The required parameter, data, is missing."},
		{"not JSON", "POST", "/threat_indicators", `{"data":`, with("Content-Type", triagesim.MediaType), 400, "Bad request", ""},
		{"unknown attribute", "POST", "/threat_indicators", `{"data":{"type":"threat_indicators","attributes":{"colour":"red"}}}`, with("Content-Type", triagesim.MediaType), 400, "Param not allowed", "colour is not allowed."},
		{"client id on create", "POST", "/threat_indicators", `{"data":{"id":"5","type":"threat_indicators","attributes":{}}}`, with("Content-Type", triagesim.MediaType), 400, "Param not allowed", "id is not allowed."},
		{"number as value", "POST", "/threat_indicators", `{"data":{"type":"threat_indicators","attributes":{"threat_value":12345}}}`, with("Content-Type", triagesim.MediaType), 400, "Invalid field value", ""},
		{"update type", "PUT", "/threat_indicators/" + id, update(id, `{"threat_type":"URL"}`), with("Content-Type", triagesim.MediaType), 400, "Param not allowed", "threat_type is not allowed."},
		{"update value", "PATCH", "/threat_indicators/" + id, update(id, `{"threat_value":"xyz"}`), with("Content-Type", triagesim.MediaType), 400, "Param not allowed", "threat_value is not allowed."},
		{"update id mismatch", "PUT", "/threat_indicators/" + id, update("77", `{"threat_level":"Benign"}`), with("Content-Type", triagesim.MediaType), 400, "Key is not included in URL", "The URL does not support the key 77"},
		{"update without id", "PUT", "/threat_indicators/" + id, `{"data":{"type":"threat_indicators","attributes":{}}}`, with("Content-Type", triagesim.MediaType), 400, "Missing Parameter", ""},
		{"update bad level", "PUT", "/threat_indicators/" + id, update(id, `{"threat_level":"High"}`), with("Content-Type", triagesim.MediaType), 422, "is not included in the list", "threat_level - is not included in the list"},
		{"update null level", "PUT", "/threat_indicators/" + id, update(id, `{"threat_level":null}`), with("Content-Type", triagesim.MediaType), 422, "can't be blank", ""},
		{"update unknown", "PUT", "/threat_indicators/999", update("999", `{"threat_level":"Benign"}`), with("Content-Type", triagesim.MediaType), 404, "Record not found", "The record identified by 999 could not be found."},
		{"update as json", "PUT", "/threat_indicators/" + id, update(id, `{"threat_level":"Benign"}`), with("Content-Type", "application/json"), 415, "Unsupported media type", ""},
		{"get unknown", "GET", "/threat_indicators/999", "", with(), 404, "Record not found", "The record identified by 999 could not be found."},
		{"get non-numeric", "GET", "/threat_indicators/abc", "", with(), 404, "Record not found", "The record identified by abc could not be found."},
		{"page size 0", "GET", "/threat_indicators?page[size]=0", "", with(), 400, "Invalid page value", "0 is not a valid value for size page parameter."},
		{"page size 201", "GET", "/threat_indicators?page[size]=201", "", with(), 400, "Invalid page value", "size exceeds maximum page size of 200."},
		{"page size 200", "GET", "/threat_indicators?page[size]=200", "", with(), 200, "", ""},
		{"page number 0", "GET", "/threat_indicators?page[number]=0", "", with(), 400, "Invalid page value", "0 is not a valid value for number page parameter."},
		{"page number text", "GET", "/threat_indicators?page[number]=two", "", with(), 400, "Invalid page value", ""},
		{"unknown filter", "GET", "/threat_indicators?filter[colour]=red", "", with(), 400, "Filter not allowed", "colour is not allowed."},
		{"bad filter operator", "GET", "/threat_indicators?filter[updated_at_cont]=2021", "", with(), 400, "Filter not allowed", ""},
		{"bad time filter", "GET", "/threat_indicators?filter[updated_at_gt]=yesterday", "", with(), 400, "Invalid filter value", ""},
		{"bad sort", "GET", "/threat_indicators?sort=colour", "", with(), 400, "Invalid sort criteria", ""},
		{"bad field", "GET", "/threat_indicators?fields[threat_indicators]=colour", "", with(), 400, "Invalid field", ""},
		{"unknown parameter", "GET", "/threat_indicators?include=reports", "", with(), 400, "Param not allowed", "include is not allowed."},
		{"unknown path", "GET", "/api/public/v2/reports", "", with(), 404, "Route not found", ""},
		{"delete", "DELETE", "/threat_indicators/" + id, "", with(), 404, "Route not found", ""},
		{"outside the API", "GET", "/admin", "", with(), 404, "Route not found", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := tc.path
			if !strings.HasPrefix(path, "/api/") && !strings.HasPrefix(path, "/admin") {
				path = "/api/public/v2" + path
			}
			r := e.send(tc.method, path, tc.body, tc.header...)
			if r.status != tc.status {
				t.Fatalf("%d %s, want %d", r.status, r.body, tc.status)
			}
			if tc.title == "" {
				return
			}
			if ct := r.header.Get("Content-Type"); ct != triagesim.MediaType {
				t.Errorf("Content-Type %q", ct)
			}
			obj := firstError(t, r)
			if obj["title"] != tc.title || (tc.detail != "" && obj["detail"] != tc.detail) || obj["status"] != strconv.Itoa(tc.status) {
				t.Fatalf("error %v, want title %q detail %q", obj, tc.title, tc.detail)
			}
		})
	}
	if in, _ := e.sim.Get(id); in.ThreatLevel != "Benign" || in.ThreatType != "MD5" {
		t.Fatalf("refused updates changed the indicator: %+v", in)
	}
	if e.sim.Len() != 1 {
		t.Fatalf("refused creates stored something: %d indicators", e.sim.Len())
	}
}

func TestMissingAttributesAreEachReported(t *testing.T) {
	e := newEnv(t, triagesim.Options{})
	r := e.api(e.token(), http.MethodPost, "/threat_indicators", `{"data":{"type":"threat_indicators","attributes":{"threat_source":"x"}}}`)
	want := `{"errors":[` +
		`{"title":"can't be blank","detail":"threat_level - can't be blank","code":"100","source":{"pointer":"/data/attributes/threat_level"},"status":"422"},` +
		`{"title":"can't be blank","detail":"threat_type - can't be blank","code":"100","source":{"pointer":"/data/attributes/threat_type"},"status":"422"},` +
		`{"title":"can't be blank","detail":"threat_value - can't be blank","code":"100","source":{"pointer":"/data/attributes/threat_value"},"status":"422"}]}`
	if r.status != 422 || string(r.body) != want {
		t.Fatalf("%d %s\nwant %s", r.status, r.body, want)
	}
}

func TestDuplicateAnswersJSONAPIResourcesShape(t *testing.T) {
	e := newEnv(t, triagesim.Options{})
	tok := e.token()
	body := createBody("Malicious", "URL", "http://dup.example/")
	if r := e.api(tok, http.MethodPost, "/threat_indicators", body); r.status != 201 {
		t.Fatalf("first create: %d %s", r.status, r.body)
	}
	r := e.api(tok, http.MethodPost, "/threat_indicators", body)
	want := `{"errors":[{"title":"has already been taken","detail":"threat_value - has already been taken","code":"100","source":{"pointer":"/data/attributes/threat_value"},"status":"422"}]}`
	if r.status != 422 || string(r.body) != want {
		t.Fatalf("%d %s\nwant %s", r.status, r.body, want)
	}
	// Same value, another type: not a duplicate.
	if r := e.api(tok, http.MethodPost, "/threat_indicators", createBody("Malicious", "Hostname", "http://dup.example/")); r.status != 201 {
		t.Fatalf("another type: %d %s", r.status, r.body)
	}
	if st := e.sim.Stats(); st.Creates != 2 || st.Duplicates != 1 || st.Invalid != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestUpdateChangesLevelAndSource(t *testing.T) {
	e := newEnv(t, triagesim.Options{})
	tok := e.token()
	old := time.Date(2021, 1, 1, 0, 0, 0, 0, time.UTC)
	s, _ := e.sim.Seed(triagesim.Indicator{ThreatLevel: "Benign", ThreatType: "SHA256", ThreatValue: "abc", ThreatSource: "one", CreatedAt: old})
	id := s[0].ID
	r := e.api(tok, http.MethodPut, "/threat_indicators/"+id, `{"data":{"id":"`+id+`","type":"threat_indicators","attributes":{"threat_source":"two"}}}`)
	if r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	in, _ := e.sim.Get(id)
	if in.ThreatLevel != "Benign" || in.ThreatSource != "two" || !in.CreatedAt.Equal(old) || !in.UpdatedAt.After(old) {
		t.Fatalf("after the update: %+v", in)
	}
	r = e.api(tok, http.MethodPatch, "/threat_indicators/"+id, `{"data":{"id":"`+id+`","type":"threat_indicators","attributes":{"threat_level":"Suspicious"}}}`)
	if in, _ := e.sim.Get(id); r.status != 200 || in.ThreatLevel != "Suspicious" || in.ThreatSource != "two" {
		t.Fatalf("PATCH: %d, %+v", r.status, in)
	}
	if st := e.sim.Stats(); st.Updates != 2 || st.Requests[triagesim.EndpointPut] != 1 || st.Requests[triagesim.EndpointPatch] != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// listPage decodes a list answer into ids and links.
func listPage(t *testing.T, r reply) ([]string, map[string]string) {
	t.Helper()
	if r.status != 200 {
		t.Fatalf("list: %d %s", r.status, r.body)
	}
	var doc struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
		Links map[string]string `json:"links"`
	}
	if err := json.Unmarshal(r.body, &doc); err != nil {
		t.Fatal(err)
	}
	ids := make([]string, len(doc.Data))
	for i, d := range doc.Data {
		ids[i] = d.ID
	}
	return ids, doc.Links
}

func TestListPagingLinks(t *testing.T) {
	e := newEnv(t, triagesim.Options{})
	tok := e.token()
	seed := make([]triagesim.Indicator, 450)
	for i := range seed {
		seed[i] = triagesim.Indicator{ThreatLevel: "Benign", ThreatType: "SHA256", ThreatValue: fmt.Sprintf("%064d", i)}
	}
	if _, err := e.sim.Seed(seed...); err != nil {
		t.Fatal(err)
	}
	base := e.srv.URL + "/api/public/v2/threat_indicators?filter%5Bthreat_type%5D=SHA256&"
	ids, links := listPage(t, e.api(tok, http.MethodGet, "/threat_indicators?filter[threat_type]=SHA256&page[size]=200", ""))
	if len(ids) != 200 || ids[0] != "1" || ids[199] != "200" {
		t.Fatalf("page 1: %d ids, %v…", len(ids), ids[:3])
	}
	want := map[string]string{
		"first": base + "page%5Bnumber%5D=1&page%5Bsize%5D=200",
		"next":  base + "page%5Bnumber%5D=2&page%5Bsize%5D=200",
		"last":  base + "page%5Bnumber%5D=3&page%5Bsize%5D=200",
	}
	if fmt.Sprint(links) != fmt.Sprint(want) {
		t.Fatalf("links\n %v\nwant\n %v", links, want)
	}
	// Following next to the end.
	total := len(ids)
	pages := 1
	for links["next"] != "" {
		u, _ := url.Parse(links["next"])
		ids, links = listPage(t, e.api(tok, http.MethodGet, strings.TrimPrefix(u.RequestURI(), "/api/public/v2"), ""))
		total += len(ids)
		pages++
		if links["prev"] == "" {
			t.Fatalf("page %d without prev", pages)
		}
	}
	if total != 450 || pages != 3 || len(ids) != 50 {
		t.Fatalf("%d indicators in %d pages (last %d)", total, pages, len(ids))
	}

	// Beyond the last page: empty, no next; an empty list's last is page 1.
	ids, links = listPage(t, e.api(tok, http.MethodGet, "/threat_indicators?page[number]=9&page[size]=200", ""))
	if len(ids) != 0 || links["next"] != "" {
		t.Fatalf("page 9: %v %v", ids, links)
	}
	ids, links = listPage(t, e.api(tok, http.MethodGet, "/threat_indicators?filter[threat_type]=URL", ""))
	if len(ids) != 0 || !strings.HasSuffix(links["last"], "page%5Bnumber%5D=1&page%5Bsize%5D=20") {
		t.Fatalf("empty list: %v %v", ids, links)
	}
}

func TestListFiltersAndSort(t *testing.T) {
	e := newEnv(t, triagesim.Options{})
	tok := e.token()
	t0 := time.Date(2021, 6, 1, 0, 0, 0, 0, time.UTC)
	_, err := e.sim.Seed(
		triagesim.Indicator{ThreatLevel: "Benign", ThreatType: "URL", ThreatValue: "http://a.example/x,y", CreatedAt: t0},                                         // 1
		triagesim.Indicator{ThreatLevel: "Malicious", ThreatType: "URL", ThreatValue: "http://b.example/", ThreatSource: "ThreatQ", CreatedAt: t0.Add(time.Hour)}, // 2
		triagesim.Indicator{ThreatLevel: "Suspicious", ThreatType: "Hostname", ThreatValue: "b.example", CreatedAt: t0.Add(2 * time.Hour)},                        // 3
		triagesim.Indicator{ThreatLevel: "Malicious", ThreatType: "Hostname", ThreatValue: "x", ThreatSource: "ThreatQ", CreatedAt: t0.Add(3 * time.Hour)},
	)
	if err == nil {
		t.Fatal("seeding a 1-character value must fail")
	}
	if e.sim.Len() != 3 {
		t.Fatalf("%d seeded before the bad one", e.sim.Len())
	}
	cases := []struct {
		query string
		want  string
	}{
		{"filter[threat_type]=URL", "1,2"},
		{"filter[threat_type]=URL,Hostname&sort=-id", "3,2,1"},
		{"filter[threat_type]=URL&filter[threat_value]=http://b.example/", "2"},
		{"filter[threat_type]=URL&filter[threat_value]=http://b.example/,http://a.example/x", "2"}, // a comma ORs
		{"filter[threat_type]=URL,Hostname&filter[threat_value]=b.example,http://b.example/", "2,3"},
		{"filter[threat_value_eq]=b.example", "3"},
		{"filter[threat_type]=URL&filter[threat_value]=http://b.example/,http://b.example/", "2"},
		{"filter[threat_value_start]=http://a.example/x", "1"},
		{"filter[threat_value_cont]=b.example", "2,3"},
		{"filter[threat_level_not_eq]=Benign,Suspicious", "2"},
		{"filter[threat_source]=ThreatQ", "2"},
		{"filter[created_at_gt]=2021-06-01T00:00:00.000Z", "2,3"},
		{"filter[created_at_lteq]=2021-06-01T01:00:00Z", "1,2"},
		{"filter[updated_at_lt]=2021-06-01", ""},
		{"filter[id]=3,1", "1,3"},
		{"sort=threat_type,id", "3,1,2"},
		{"sort=-created_at&page[size]=2&page[number]=2", "1"},
	}
	for _, tc := range cases {
		q, _ := url.ParseQuery(tc.query)
		ids, _ := listPage(t, e.api(tok, http.MethodGet, "/threat_indicators?"+q.Encode(), ""))
		if got := strings.Join(ids, ","); got != tc.want {
			t.Errorf("%s: ids %q, want %q", tc.query, got, tc.want)
		}
	}
}

func TestSparseFieldsets(t *testing.T) {
	e := newEnv(t, triagesim.Options{})
	tok := e.token()
	e.sim.Seed(triagesim.Indicator{ThreatLevel: "Benign", ThreatType: "URL", ThreatValue: "http://a.example/"})
	r := e.api(tok, http.MethodGet, "/threat_indicators/1?fields[threat_indicators]=threat_value,threat_level", "")
	attrs := r.json(t)["data"].(map[string]any)["attributes"].(map[string]any)
	if len(attrs) != 2 || attrs["threat_value"] != "http://a.example/" || attrs["threat_level"] != "Benign" {
		t.Fatalf("attributes %v", attrs)
	}
	_, links := listPage(t, e.api(tok, http.MethodGet, "/threat_indicators?fields[threat_indicators]=threat_value&sort=-id", ""))
	if !strings.Contains(links["first"], "fields%5Bthreat_indicators%5D=threat_value") || !strings.Contains(links["first"], "sort=-id") {
		t.Fatalf("links drop the request's parameters: %v", links)
	}
}

func TestConcurrentCreatesOfOneValue(t *testing.T) {
	e := newEnv(t, triagesim.Options{})
	tok := e.token()
	const n = 40
	statuses := make(chan int, 2*n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			statuses <- e.api(tok, http.MethodPost, "/threat_indicators", createBody("Malicious", "MD5", strings.Repeat("f", 32))).status
		})
		wg.Go(func() {
			statuses <- e.api(tok, http.MethodPost, "/threat_indicators", createBody("Malicious", "MD5", fmt.Sprintf("%032d", i))).status
		})
	}
	wg.Wait()
	close(statuses)
	count := map[int]int{}
	for s := range statuses {
		count[s]++
	}
	if count[201] != n+1 || count[422] != n-1 {
		t.Fatalf("answers %v: want %d created (one of the shared value) and %d duplicates", count, n+1, n-1)
	}
	seen := map[string]bool{}
	for _, in := range e.sim.Indicators() {
		if seen[in.ID] {
			t.Fatalf("id %s twice", in.ID)
		}
		seen[in.ID] = true
	}
	if st := e.sim.Stats(); st.Creates != n+1 || st.Duplicates != n-1 || len(seen) != n+1 {
		t.Fatalf("stats %+v, %d stored", st, len(seen))
	}
}

func TestRateLimit(t *testing.T) {
	e := newEnv(t, triagesim.Options{})
	tok := e.token()
	e.sim.SetRateLimit(1, 5, 0) // a bucket of five, refilled slowly
	count := map[int]int{}
	var retryAfter string
	for range 10 {
		r := e.api(tok, http.MethodGet, "/system/status", "")
		count[r.status]++
		if r.status == 429 {
			retryAfter = r.header.Get("Retry-After")
		}
	}
	// The bucket holds five; a sixth may drip in if the loop is slow.
	if count[200] < 5 || count[200] > 6 || count[429] != 10-count[200] || retryAfter != "1" {
		t.Fatalf("answers %v, Retry-After %q", count, retryAfter)
	}
	// The token endpoint is outside the limit.
	e.token()
	e.sim.SetRateLimit(0.01, 1, 42*time.Second)
	e.api(tok, http.MethodGet, "/system/status", "")
	if r := e.api(tok, http.MethodGet, "/system/status", ""); r.status != 429 || r.header.Get("Retry-After") != "42" {
		t.Fatalf("%d Retry-After %q", r.status, r.header.Get("Retry-After"))
	}
	e.sim.SetRateLimit(0, 0, 0)
	if r := e.api(tok, http.MethodGet, "/system/status", ""); r.status != 200 {
		t.Fatalf("limit off: %d", r.status)
	}
	if st := e.sim.Stats(); st.RateLimited != int64(count[429])+1 {
		t.Fatalf("429s counted %d", st.RateLimited)
	}
}

func TestFailureKnobs(t *testing.T) {
	e := newEnv(t, triagesim.Options{})
	tok := e.token()
	e.sim.FailNext(3, http.StatusBadGateway)
	var got []int
	for range 5 {
		got = append(got, e.api(tok, http.MethodGet, "/system/status", "").status)
	}
	if fmt.Sprint(got) != "[502 502 502 200 200]" {
		t.Fatalf("FailNext(3): %v", got)
	}

	e.sim.SetFailureRate(1)
	if r := e.api(tok, http.MethodGet, "/system/status", ""); r.status != triagesim.DefaultFailureStatus {
		t.Fatalf("failure rate 1: %d", r.status)
	}
	e.sim.SetFailureRate(0.5)
	failed := 0
	const n = 400
	for range n {
		if e.api(tok, http.MethodGet, "/system/status", "").status >= 500 {
			failed++
		}
	}
	// Binomial(400, 0.5): outside 150..250 is a 5-sigma event.
	if failed < 150 || failed > 250 {
		t.Fatalf("%d of %d failed at a rate of 0.5", failed, n)
	}
	e.sim.SetFailureRate(0)
	if st := e.sim.Stats(); st.ServerErrors != int64(3+1+failed) {
		t.Fatalf("5xx counted %d, want %d", st.ServerErrors, 3+1+failed)
	}
	opts := e.sim.Options()
	opts.FailureRate, opts.FailureStatus = 1, 500
	e.sim.SetOptions(opts)
	if r := e.api(tok, http.MethodGet, "/system/status", ""); r.status != 500 {
		t.Fatalf("SetOptions failure status: %d", r.status)
	}
}

func TestLatency(t *testing.T) {
	e := newEnv(t, triagesim.Options{})
	e.sim.SetLatency(40*time.Millisecond, 20*time.Millisecond)
	start := time.Now()
	e.token()
	if d := time.Since(start); d < 40*time.Millisecond {
		t.Fatalf("answered in %v, want at least the 40ms latency", d)
	}
}

func TestSeedAndLookups(t *testing.T) {
	sim := triagesim.New(triagesim.Options{})
	got, err := sim.Seed(
		triagesim.Indicator{ThreatLevel: "Benign", ThreatType: "Hostname", ThreatValue: "a.example"},
		triagesim.Indicator{ThreatLevel: "Malicious", ThreatType: "URL", ThreatValue: "http://a.example/", ThreatSource: "demo"},
	)
	if err != nil || len(got) != 2 || got[0].ID != "1" || got[1].ID != "2" || got[1].CreatedAt.IsZero() {
		t.Fatalf("Seed = %+v, %v", got, err)
	}
	if _, err := sim.Seed(triagesim.Indicator{ThreatLevel: "Benign", ThreatType: "Hostname", ThreatValue: "a.example"}); err == nil ||
		!strings.Contains(err.Error(), "has already been taken") {
		t.Fatalf("duplicate seed: %v", err)
	}
	if in, ok := sim.Find("URL", "http://a.example/"); !ok || in.ID != "2" || in.ThreatSource != "demo" {
		t.Fatalf("Find = %+v, %v", in, ok)
	}
	if _, ok := sim.Find("url", "http://a.example/"); ok {
		t.Fatal("Find must match the type exactly")
	}
	if in, ok := sim.Get("1"); !ok || in.ThreatValue != "a.example" {
		t.Fatalf("Get = %+v, %v", in, ok)
	}
	if _, ok := sim.Get("x"); ok {
		t.Fatal("Get(x)")
	}
	all := sim.Indicators()
	all[0].ThreatLevel = "changed"
	if in, _ := sim.Get("1"); in.ThreatLevel != "Benign" || sim.Len() != 2 {
		t.Fatal("Indicators must return a copy")
	}
	if st := sim.Stats(); st.Creates != 0 || st.Total() != 0 {
		t.Fatalf("seeding is not traffic: %+v", st)
	}
}

func TestRequestBodyBound(t *testing.T) {
	e := newEnv(t, triagesim.Options{MaxBodyBytes: 256})
	r := e.api(e.token(), http.MethodPost, "/threat_indicators", createBody("Benign", "URL", "http://a.example/"+strings.Repeat("x", 300)))
	if r.status != http.StatusRequestEntityTooLarge {
		t.Fatalf("%d %s", r.status, r.body)
	}
}

func createFrom(level, typ, value, source string) string {
	return `{"data":{"type":"threat_indicators","attributes":{"threat_level":"` + level + `","threat_type":"` + typ +
		`","threat_value":"` + value + `","threat_source":"` + source + `"}}}`
}

// TestUniquenessPerSourceOrPerValue: by default Triage keeps one indicator
// per type, value and source (as its documentation says of threat_source);
// the other rule keeps one per type and value. A change of source that
// would break the rule is refused like a create.
func TestUniquenessPerSourceOrPerValue(t *testing.T) {
	const taken = `{"errors":[{"title":"has already been taken","detail":"threat_value - has already been taken","code":"100","source":{"pointer":"/data/attributes/threat_value"},"status":"422"}]}`
	for _, u := range []triagesim.Uniqueness{triagesim.UniquePerSource, triagesim.UniquePerValue} {
		t.Run(u.String(), func(t *testing.T) {
			e := newEnv(t, triagesim.Options{Uniqueness: u})
			tok := e.token()
			if r := e.api(tok, http.MethodPost, "/threat_indicators", createFrom("Malicious", "MD5", "abcd", "Triage-UI")); r.status != 201 {
				t.Fatalf("first: %d %s", r.status, r.body)
			}
			r := e.api(tok, http.MethodPost, "/threat_indicators", createFrom("Malicious", "MD5", "abcd", "ThreatQ"))
			if u == triagesim.UniquePerSource && r.status != 201 || u == triagesim.UniquePerValue && (r.status != 422 || string(r.body) != taken) {
				t.Fatalf("the same value from another source: %d %s", r.status, r.body)
			}
			if r := e.api(tok, http.MethodPost, "/threat_indicators", createFrom("Benign", "MD5", "abcd", "Triage-UI")); r.status != 422 {
				t.Fatalf("the same value and source again: %d %s", r.status, r.body)
			}
			if u == triagesim.UniquePerValue {
				return
			}
			ours, _ := e.sim.FindFrom("MD5", "abcd", "ThreatQ")
			theirs, _ := e.sim.FindFrom("MD5", "abcd", "Triage-UI")
			r = e.api(tok, http.MethodPut, "/threat_indicators/"+ours.ID, `{"data":{"id":"`+ours.ID+`","type":"threat_indicators","attributes":{"threat_source":"Triage-UI"}}}`)
			if r.status != 422 || string(r.body) != taken {
				t.Fatalf("moving ours onto their source: %d %s", r.status, r.body)
			}
			list := e.api(tok, http.MethodGet, "/threat_indicators?filter[threat_type]=MD5&filter[threat_value]=abcd&filter[threat_source]=ThreatQ", "")
			var page struct {
				Data []struct{ ID string } `json:"data"`
			}
			_ = json.Unmarshal(list.body, &page)
			if list.status != 200 || len(page.Data) != 1 || page.Data[0].ID != ours.ID || ours.ID == theirs.ID {
				t.Fatalf("filtered by source: %d %s", list.status, list.body)
			}
		})
	}
}
