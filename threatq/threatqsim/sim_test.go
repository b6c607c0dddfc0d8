package threatqsim_test

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tqtriage/tqtriage/internal/fixture"
	"github.com/tqtriage/tqtriage/threatq/internal/wire"
	"github.com/tqtriage/tqtriage/threatq/threatqsim"
)

// --- plumbing --------------------------------------------------------------

// rawClient speaks to the sim with plain HTTP, so that these tests see the
// documents exactly as sent.
type rawClient struct {
	t     *testing.T
	url   string
	token string
}

func start(t *testing.T, opts threatqsim.Options) (*threatqsim.Server, *rawClient) {
	t.Helper()
	sim := threatqsim.New(opts)
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	return sim, &rawClient{t: t, url: srv.URL}
}

type answer struct {
	status int
	header http.Header
	body   []byte
}

func (a answer) json(t *testing.T) map[string]json.RawMessage {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(a.body, &m); err != nil {
		t.Fatalf("answer %d %q is not a JSON object: %v", a.status, a.body, err)
	}
	return m
}

func (c *rawClient) send(req *http.Request) answer {
	c.t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: b}
}

// api sends an API call with "Authorization: <scheme> <token>".
func (c *rawClient) apiAs(scheme, method, path, body string) answer {
	c.t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, c.url+path, r)
	if err != nil {
		c.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", scheme+" "+c.token)
	return c.send(req)
}

func (c *rawClient) api(method, path, body string) answer {
	c.t.Helper()
	return c.apiAs("Bearer", method, path, body)
}

// tokenRequest posts to /api/token.
func (c *rawClient) tokenRequest(query, contentType, body string, basic *[2]string) answer {
	c.t.Helper()
	u := c.url + "/api/token"
	if query != "" {
		u += "?" + query
	}
	req, err := http.NewRequest(http.MethodPost, u, strings.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Content-Type", contentType)
	if basic != nil {
		req.SetBasicAuth(basic[0], basic[1])
	}
	return c.send(req)
}

// login gets a token with the default client credentials.
func (c *rawClient) login() wire.TokenResponse {
	c.t.Helper()
	a := c.tokenRequest("grant_type=client_credentials", "application/x-www-form-urlencoded",
		"grant_type=client_credentials", &[2]string{threatqsim.DefaultClientID, threatqsim.DefaultClientSecret})
	if a.status != http.StatusOK {
		c.t.Fatalf("token: %d %s", a.status, a.body)
	}
	var tr wire.TokenResponse
	if err := json.Unmarshal(a.body, &tr); err != nil {
		c.t.Fatal(err)
	}
	c.token = tr.AccessToken
	return tr
}

func keys(t *testing.T, raw []byte) []string {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("%q is not a JSON object: %v", raw, err)
	}
	return slices.Sorted(maps.Keys(m))
}

func objects(t *testing.T, raw []byte) []json.RawMessage {
	t.Helper()
	var list []json.RawMessage
	if err := json.Unmarshal(raw, &list); err != nil {
		t.Fatalf("%q is not a JSON array: %v", raw, err)
	}
	return list
}

// keySets returns the union and the intersection of the objects' keys.
func keySets(t *testing.T, objs []json.RawMessage) (union, common []string) {
	t.Helper()
	count := map[string]int{}
	for _, o := range objs {
		for _, k := range keys(t, o) {
			count[k]++
		}
	}
	for k, n := range count {
		union = append(union, k)
		if n == len(objs) {
			common = append(common, k)
		}
	}
	slices.Sort(union)
	slices.Sort(common)
	return union, common
}

func rename(list []string, from, to string) []string {
	out := slices.Clone(list)
	for i, k := range out {
		if k == from {
			out[i] = to
		}
	}
	slices.Sort(out)
	return out
}

func isSubset(sub, super []string) bool {
	for _, k := range sub {
		if !slices.Contains(super, k) {
			return false
		}
	}
	return true
}

// --- the fixtures decode with the client's types -----------------------------

func TestFixturesDecodeWithClientTypes(t *testing.T) {
	t.Run("collection page", func(t *testing.T) {
		var p wire.CollectionPage
		if err := json.Unmarshal(fixture.Read(t, "threatq", "elastic_data_collection_page1.json"), &p); err != nil {
			t.Fatal(err)
		}
		if p.Total != 4090 || p.Limit != 100 || p.NextCursorMark != "AoJ9z5LKnvwCJjEwNjk2Nw==" || len(p.Data) != 6 {
			t.Fatalf("page %+v", p)
		}
		got := p.Data[0]
		if got.ID != 106767 || got.Type != "IP Address" || got.Value != "107.189.1.90" {
			t.Fatalf("first indicator %+v", got)
		}
		// The attribute rows come along, with their row ids.
		if len(got.Attributes) == 0 || got.Attributes[0] != (wire.IndicatorAttribute{ID: 4893068, Name: "Contact", Value: got.Attributes[0].Value}) {
			t.Fatalf("first indicator's attributes %+v", got.Attributes)
		}
	})
	t.Run(`last page with "data": {}`, func(t *testing.T) {
		var p wire.CollectionPage
		if err := json.Unmarshal(fixture.Read(t, "threatq", "elastic_data_collection_page2_end.json"), &p); err != nil {
			t.Fatal(err)
		}
		if len(p.Data) != 0 || p.Total != 4090 || p.NextCursorMark != "BoJ9z5LKnvwCJjEwNjk2Nw==" {
			t.Fatalf("page %+v", p)
		}
	})
	t.Run("indicator query with offset paging", func(t *testing.T) {
		var p wire.CollectionPage
		if err := json.Unmarshal(fixture.Read(t, "threatq", "xsoar_indicators_query_response.json"), &p); err != nil {
			t.Fatal(err)
		}
		if len(p.Data) != 1 || p.Data[0].ID != 2019 || p.Data[0].Type != "Email Address" || p.Data[0].Value != "foo@demisto.com" {
			t.Fatalf("page %+v", p)
		}
	})
	t.Run("search results with MD5 and SHA-1 indicators", func(t *testing.T) {
		var results []struct {
			EntityResult wire.CollectionPage
		}
		if err := json.Unmarshal(fixture.Read(t, "threatq", "siemplify_enrich_hash_results.json"), &results); err != nil {
			t.Fatal(err)
		}
		if len(results) < 2 || results[0].EntityResult.Data[0].Type != "MD5" || results[1].EntityResult.Data[0].Type != "SHA-1" {
			t.Fatalf("results %+v", results)
		}
	})
	t.Run("token responses", func(t *testing.T) {
		cases := []struct {
			raw  []byte
			want wire.TokenResponse
		}{
			{fixture.Read(t, "threatq", "elastic_token_response_client_credentials.json"), wire.TokenResponse{AccessToken: "testaccess", TokenType: "Bearer", ExpiresIn: 172799, RefreshToken: "testrefresh"}},
			{fixture.Read(t, "threatq", "xsoar_token_response_password_grant.json"), wire.TokenResponse{AccessToken: "3220879210", ExpiresIn: 3600}},
		}
		var kibana struct {
			TokenResponse json.RawMessage `json:"token_response"`
		}
		if err := json.Unmarshal(fixture.Read(t, "threatq", "kibana_threatq_test_exchanges.json"), &kibana); err != nil {
			t.Fatal(err)
		}
		cases = append(cases, struct {
			raw  []byte
			want wire.TokenResponse
		}{kibana.TokenResponse, wire.TokenResponse{AccessToken: "test-token", TokenType: "bearer", ExpiresIn: 3600}})
		for _, tc := range cases {
			var got wire.TokenResponse
			if err := json.Unmarshal(tc.raw, &got); err != nil || got != tc.want {
				t.Fatalf("%s: got %+v, %v; want %+v", tc.raw, got, err, tc.want)
			}
		}
	})
	t.Run("attribute add response", func(t *testing.T) {
		var row wire.AttributeRow
		if err := json.Unmarshal(fixture.Read(t, "threatq", "siemplify_add_attribute_response.json"), &row); err != nil {
			t.Fatal(err)
		}
		if row.ID != 3 || row.AttributeID != 1 || row.Name != "Category" || row.Value != "Malware" ||
			len(row.Sources) != 1 || row.Sources[0].Name != "tip.labops@siemplify.co" {
			t.Fatalf("row %+v", row)
		}
	})
	t.Run("error responses", func(t *testing.T) {
		var bodies []json.RawMessage
		if err := json.Unmarshal(fixture.Read(t, "threatq", "xsoar_error_responses.json"), &bodies); err != nil {
			t.Fatal(err)
		}
		want := [][]string{
			{"name: The name has already been taken.", "test: test_error1", "test: test_error2"},
			{"First Error", "Second error - part 1", "Second error - part 2"},
		}
		for i, b := range bodies {
			if got := wire.ParseErrorBody(b); !slices.Equal(got, want[i]) {
				t.Fatalf("body %d: %q, want %q", i, got, want[i])
			}
		}
	})
}

// --- the sim's answers have the fixtures' shapes -----------------------------

func TestTokenAnswerHasTheFixtureShape(t *testing.T) {
	_, c := start(t, threatqsim.Options{})
	a := c.tokenRequest("grant_type=client_credentials", "application/x-www-form-urlencoded", "",
		&[2]string{threatqsim.DefaultClientID, threatqsim.DefaultClientSecret})
	if want := keys(t, fixture.Read(t, "threatq", "elastic_token_response_client_credentials.json")); !slices.Equal(keys(t, a.body), want) {
		t.Fatalf("token keys %v, want %v", keys(t, a.body), want)
	}
	var tr wire.TokenResponse
	if err := json.Unmarshal(a.body, &tr); err != nil || tr.TokenType != "Bearer" || tr.ExpiresIn != 172800 || tr.AccessToken == "" {
		t.Fatalf("token %+v, %v", tr, err)
	}
}

func TestCollectionPagesHaveTheFixtureShape(t *testing.T) {
	sim, c := start(t, threatqsim.Options{})
	sim.AddCollection("h", "Shapes", []threatqsim.SeedIndicator{
		{Type: "SHA-256", Value: strings.Repeat("a", 64), Score: 7, Attributes: []threatqsim.SeedAttribute{{Name: "Country", Value: "US"}}},
		{Type: "FQDN", Value: "evil.example.com", Status: "Expired"},
	})
	c.login()

	fix := fixture.Read(t, "threatq", "elastic_data_collection_page1.json")
	fixPage := map[string]json.RawMessage{}
	if err := json.Unmarshal(fix, &fixPage); err != nil {
		t.Fatal(err)
	}
	fixInds := objects(t, fixPage["data"])

	a := c.api(http.MethodGet, "/api/indicators/query/hash/h?sort=updated_at&limit=2&cursorMark=*", "")
	if a.status != http.StatusOK {
		t.Fatalf("%d %s", a.status, a.body)
	}
	if got, want := keys(t, a.body), keys(t, fix); !slices.Equal(got, want) {
		t.Fatalf("page keys %v, want %v", got, want)
	}
	page := a.json(t)
	inds := objects(t, page["data"])
	if len(inds) != 2 {
		t.Fatalf("%d indicators", len(inds))
	}

	union, common := keySets(t, fixInds)
	for _, in := range inds {
		got := keys(t, in)
		if !isSubset(got, union) || !isSubset(common, got) {
			t.Fatalf("indicator keys %v; the fixture's indicators have %v in common and %v in all", got, common, union)
		}
		var sim, fx map[string]json.RawMessage
		_ = json.Unmarshal(in, &sim)
		_ = json.Unmarshal(fixInds[0], &fx)
		for _, sub := range []string{"type", "status"} {
			if g, w := keys(t, sim[sub]), keys(t, fx[sub]); !slices.Equal(g, w) {
				t.Fatalf("%s keys %v, want %v", sub, g, w)
			}
		}
		srcUnion, srcCommon := keySets(t, collect(t, fixInds, "sources"))
		for _, src := range objects(t, sim["sources"]) {
			if g := keys(t, src); !isSubset(g, srcUnion) || !isSubset(srcCommon, g) {
				t.Fatalf("source keys %v, want between %v and %v", g, srcCommon, srcUnion)
			}
		}
		attrUnion, attrCommon := keySets(t, collect(t, fixInds, "attributes"))
		for _, at := range objects(t, sim["attributes"]) {
			if g := keys(t, at); !isSubset(g, attrUnion) || !isSubset(attrCommon, g) {
				t.Fatalf("attribute keys %v, want between %v and %v", g, attrCommon, attrUnion)
			}
		}
		var ts string
		if err := json.Unmarshal(sim["updated_at"], &ts); err != nil {
			t.Fatal(err)
		}
		if _, err := time.Parse("2006-01-02 15:04:05", ts); err != nil {
			t.Fatalf("timestamp %q is not in ThreatQ's format", ts)
		}
	}
	var decoded wire.CollectionPage
	if err := json.Unmarshal(a.body, &decoded); err != nil || len(decoded.Data) != 2 || decoded.Data[0].Type != "SHA-256" || decoded.Total != 2 {
		t.Fatalf("decoded %+v, %v", decoded, err)
	}

	// The cursor of the last page leads to the "data": {} page.
	next := decoded.NextCursorMark
	if _, err := base64.StdEncoding.DecodeString(next); err != nil {
		t.Fatalf("cursor %q is not base64: %v", next, err)
	}
	end := c.api(http.MethodGet, "/api/indicators/query/hash/h?sort=updated_at&limit=2&cursorMark="+url.QueryEscape(next), "")
	endFix := fixture.Read(t, "threatq", "elastic_data_collection_page2_end.json")
	if got, want := keys(t, end.body), keys(t, endFix); !slices.Equal(got, want) {
		t.Fatalf("end page keys %v, want %v", got, want)
	}
	if data := string(end.json(t)["data"]); data != "{}" {
		t.Fatalf(`end page data %s, want {} like the fixture`, data)
	}
	var last wire.CollectionPage
	if err := json.Unmarshal(end.body, &last); err != nil || len(last.Data) != 0 {
		t.Fatalf("end page decoded %+v, %v", last, err)
	}
}

// collect gathers the objects of a list member of every object.
func collect(t *testing.T, objs []json.RawMessage, member string) []json.RawMessage {
	t.Helper()
	var out []json.RawMessage
	for _, o := range objs {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(o, &m); err != nil {
			t.Fatal(err)
		}
		out = append(out, objects(t, m[member])...)
	}
	return out
}

func TestAttributeAnswersHaveTheFixtureShape(t *testing.T) {
	sim, c := start(t, threatqsim.Options{})
	id := sim.AddCollection("h", "n", []threatqsim.SeedIndicator{{Type: "MD5", Value: strings.Repeat("b", 32)}})[0]
	c.login()
	a := c.api(http.MethodPost, "/api/indicators/"+itoa(id)+"/attributes", `{"name":"Category","value":"Malware","sources":[{"name":"Cofense Triage"}]}`)
	if a.status != http.StatusCreated {
		t.Fatalf("%d %s", a.status, a.body)
	}
	row := a.json(t)["data"]

	// The fixture is an adversary's attribute; an indicator's names the
	// indicator instead, and carries touched_at like the page's rows.
	fix := fixture.Read(t, "threatq", "siemplify_add_attribute_response.json")
	want := append(rename(keys(t, fix), "adversary_id", "indicator_id"), "touched_at")
	slices.Sort(want)
	if got := keys(t, row); !slices.Equal(got, want) {
		t.Fatalf("attribute keys %v, want %v", got, want)
	}
	var simRow, fixRow map[string]json.RawMessage
	_ = json.Unmarshal(row, &simRow)
	_ = json.Unmarshal(fix, &fixRow)
	if g, w := keys(t, simRow["attribute"]), keys(t, fixRow["attribute"]); !slices.Equal(g, w) {
		t.Fatalf("attribute.attribute keys %v, want %v", g, w)
	}
	simSrc, fixSrc := objects(t, simRow["sources"])[0], objects(t, fixRow["sources"])[0]
	if g, w := keys(t, simSrc), keys(t, fixSrc); !slices.Equal(g, w) {
		t.Fatalf("source keys %v, want %v", g, w)
	}
	var simPivot, fixPivot map[string]json.RawMessage
	_ = json.Unmarshal(simSrc, &simPivot)
	_ = json.Unmarshal(fixSrc, &fixPivot)
	if g, w := keys(t, simPivot["pivot"]), rename(keys(t, fixPivot["pivot"]), "adversary_attribute_id", "indicator_attribute_id"); !slices.Equal(g, w) {
		t.Fatalf("pivot keys %v, want %v", g, w)
	}

	var decoded wire.AttributeRow
	if err := json.Unmarshal(row, &decoded); err != nil || decoded.Name != "Category" || decoded.Value != "Malware" ||
		len(decoded.Sources) != 1 || decoded.Sources[0].Name != "Cofense Triage" {
		t.Fatalf("decoded %+v, %v", decoded, err)
	}
	var list wire.AttributeList
	l := c.api(http.MethodGet, "/api/indicators/"+itoa(id)+"/attributes", "")
	if err := json.Unmarshal(l.body, &list); err != nil || list.Total != 1 || len(list.Data) != 1 || list.Data[0].ID != decoded.ID {
		t.Fatalf("list %s decoded %+v, %v", l.body, list, err)
	}
}

func TestErrorAnswersHaveTheFixtureShapes(t *testing.T) {
	sim, c := start(t, threatqsim.Options{})
	id := sim.AddCollection("h", "n", []threatqsim.SeedIndicator{{Type: "MD5", Value: strings.Repeat("c", 32)}})[0]
	c.login()
	var fix []json.RawMessage
	if err := json.Unmarshal(fixture.Read(t, "threatq", "xsoar_error_responses.json"), &fix); err != nil {
		t.Fatal(err)
	}

	// Validation: {"data":{"errors":{"field":["…"]}}}
	a := c.api(http.MethodPost, "/api/indicators/"+itoa(id)+"/attributes", `{"name":"Category"}`)
	if a.status != http.StatusUnprocessableEntity {
		t.Fatalf("%d %s", a.status, a.body)
	}
	if !sameStructure(t, a.body, fix[0]) {
		t.Fatalf("422 body %s is not shaped like %s", a.body, fix[0])
	}
	if got := wire.ParseErrorBody(a.body); !slices.Equal(got, []string{"value: The value field is required."}) {
		t.Fatalf("messages %q", got)
	}

	// Others: {"errors":["…"]}
	a = c.api(http.MethodGet, "/api/indicators/999999999999/attributes", "")
	if a.status != http.StatusNotFound || !slices.Equal(keys(t, a.body), keys(t, fix[1])) {
		t.Fatalf("%d %s", a.status, a.body)
	}
	if got := wire.ParseErrorBody(a.body); len(got) != 1 || !strings.Contains(got[0], "could not be found") {
		t.Fatalf("messages %q", got)
	}
}

// sameStructure compares two JSON documents' key paths down to the first
// level of lists: {"data":{"errors":{…}}} with a list of strings per field.
func sameStructure(t *testing.T, a, b []byte) bool {
	t.Helper()
	type shape struct {
		Data struct {
			Errors map[string][]string `json:"errors"`
		} `json:"data"`
	}
	var x, y shape
	return json.Unmarshal(a, &x) == nil && json.Unmarshal(b, &y) == nil &&
		len(x.Data.Errors) > 0 && len(y.Data.Errors) > 0 && slices.Equal(keys(t, a), keys(t, b))
}

func itoa(id int64) string { return strconv.FormatInt(id, 10) }
