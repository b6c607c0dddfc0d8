package threatqsim_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tqtriage/tqtriage/threatq/internal/wire"
	"github.com/tqtriage/tqtriage/threatq/threatqsim"
)

func TestTokenGrants(t *testing.T) {
	const form = "application/x-www-form-urlencoded"
	basic := &[2]string{threatqsim.DefaultClientID, threatqsim.DefaultClientSecret}
	passwordForm := url.Values{"grant_type": {"password"}, "email": {threatqsim.DefaultEmail},
		"password": {threatqsim.DefaultPassword}, "client_id": {threatqsim.DefaultClientID}}.Encode()
	cases := []struct {
		name        string
		query, ct   string
		body        string
		basic       *[2]string
		status      int
		wantMessage string
	}{
		{"client credentials, Basic, grant in the query", "grant_type=client_credentials", form, "", basic, 200, ""},
		{"client credentials, Basic, grant in the body", "", form, "grant_type=client_credentials", basic, 200, ""},
		{"client credentials in the body", "", form, url.Values{"grant_type": {"client_credentials"}, "client_id": {basic[0]}, "client_secret": {basic[1]}}.Encode(), nil, 200, ""},
		{"password grant, form", "grant_type=password", form, passwordForm, nil, 200, ""},
		{"password grant, JSON like the Kibana connector", "", "application/json",
			`{"email":"analyst@example.com","password":"sim-password","grant_type":"password","client_id":"tqtriage-sim"}`, nil, 200, ""},
		{"wrong secret", "grant_type=client_credentials", form, "", &[2]string{basic[0], "nope"}, 401, "invalid_client"},
		{"wrong password", "grant_type=password", form, strings.Replace(passwordForm, "sim-password", "nope", 1), nil, 400, "invalid_grant"},
		{"no grant", "", form, "", basic, 400, "unsupported_grant_type"},
		{"unknown grant", "grant_type=implicit", form, "", basic, 400, "unsupported_grant_type"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sim, c := start(t, threatqsim.Options{})
			a := c.tokenRequest(tc.query, tc.ct, tc.body, tc.basic)
			if a.status != tc.status {
				t.Fatalf("status %d %s, want %d", a.status, a.body, tc.status)
			}
			if tc.status != 200 {
				if msgs := wire.ParseErrorBody(a.body); len(msgs) == 0 || !strings.HasPrefix(msgs[0], tc.wantMessage) {
					t.Fatalf("messages %q, want %s", msgs, tc.wantMessage)
				}
				if sim.Counts().TokensIssued != 0 {
					t.Fatal("a token was issued")
				}
				return
			}
			var tr wire.TokenResponse
			if err := json.Unmarshal(a.body, &tr); err != nil || tr.AccessToken == "" || tr.RefreshToken == "" {
				t.Fatalf("token %s: %v", a.body, err)
			}
			c.token = tr.AccessToken
			if a := c.api(http.MethodGet, "/api/indicators/query/hash/none", ""); a.status != http.StatusNotFound {
				t.Fatalf("the token does not work: %d %s", a.status, a.body)
			}
		})
	}
}

func TestRefreshTokenWorksOnce(t *testing.T) {
	_, c := start(t, threatqsim.Options{})
	tr := c.login()
	q := "grant_type=refresh_token&refresh_token=" + tr.RefreshToken
	if a := c.tokenRequest(q, "application/x-www-form-urlencoded", "", nil); a.status != 200 {
		t.Fatalf("refresh: %d %s", a.status, a.body)
	}
	if a := c.tokenRequest(q, "application/x-www-form-urlencoded", "", nil); a.status != 400 {
		t.Fatalf("second refresh with the same token: %d %s", a.status, a.body)
	}
}

func TestOnlyCapitalBearerIsAccepted(t *testing.T) {
	sim, c := start(t, threatqsim.Options{})
	sim.AddCollection("h", "n", nil)
	c.login()
	for _, scheme := range []string{"bearer", "BEARER", "Token", "Basic"} {
		a := c.apiAs(scheme, http.MethodGet, "/api/search/query/h", "")
		if a.status != http.StatusUnauthorized || a.header.Get("WWW-Authenticate") == "" {
			t.Fatalf("%q: %d %s, want 401", scheme, a.status, a.body)
		}
	}
	if a := c.api(http.MethodGet, "/api/search/query/h", ""); a.status != http.StatusOK {
		t.Fatalf("Bearer: %d %s", a.status, a.body)
	}
	if n := sim.Counts().Unauthorized; n != 4 {
		t.Fatalf("%d unauthorized", n)
	}
}

func TestTokensExpireAndCanBeRevoked(t *testing.T) {
	sim, c := start(t, threatqsim.Options{TokenLifetime: 300 * time.Millisecond})
	sim.AddCollection("h", "n", nil)
	tr := c.login()
	if tr.ExpiresIn != 1 {
		t.Fatalf("expires_in %d for 300ms, want 1 (at least one second)", tr.ExpiresIn)
	}
	if a := c.api(http.MethodGet, "/api/search/query/h", ""); a.status != 200 {
		t.Fatalf("%d", a.status)
	}
	time.Sleep(350 * time.Millisecond)
	if a := c.api(http.MethodGet, "/api/search/query/h", ""); a.status != 401 {
		t.Fatalf("expired token: %d", a.status)
	}
	c.login()
	sim.ExpireTokens()
	if a := c.api(http.MethodGet, "/api/search/query/h", ""); a.status != 401 {
		t.Fatalf("revoked token: %d", a.status)
	}
}

func TestIDsDifferPerInstanceAndRepeatWithASeed(t *testing.T) {
	ids := func(seed uint64) (int64, int64) {
		sim := threatqsim.New(threatqsim.Options{Seed: seed})
		id := sim.AddCollection("h", "n", []threatqsim.SeedIndicator{{Type: "SHA-256", Value: "x"}})[0]
		typ, _ := sim.TypeID("SHA-256")
		return id, typ
	}
	id1, typ1 := ids(1)
	id2, typ2 := ids(2)
	if id1 == id2 || typ1 == typ2 {
		t.Fatalf("seeds 1 and 2 gave indicator ids %d/%d and SHA-256 type ids %d/%d", id1, id2, typ1, typ2)
	}
	if again, typAgain := ids(1); again != id1 || typAgain != typ1 {
		t.Fatal("the same seed gave other ids")
	}
}

func TestCursorPaging(t *testing.T) {
	sim, c := start(t, threatqsim.Options{MaxPageSize: 3})
	seeds := make([]threatqsim.SeedIndicator, 7)
	for i := range seeds {
		seeds[i] = threatqsim.SeedIndicator{Type: "FQDN", Value: "h" + itoa(int64(i)) + ".example.com"}
	}
	ids := sim.AddCollection("h", "n", seeds)
	c.login()
	var got []int64
	cursor := "*"
	for range 10 {
		a := c.api(http.MethodGet, "/api/indicators/query/hash/h?sort=updated_at&limit=100&cursorMark="+url.QueryEscape(cursor), "")
		var p wire.CollectionPage
		if err := json.Unmarshal(a.body, &p); err != nil || a.status != 200 {
			t.Fatalf("%d %s: %v", a.status, a.body, err)
		}
		if p.Limit != 3 || p.Total != 7 {
			t.Fatalf("limit %d total %d, want the cap 3 and 7", p.Limit, p.Total)
		}
		if len(p.Data) == 0 {
			if p.NextCursorMark != cursor {
				t.Fatalf("the last page's cursor %q, want the one asked for %q", p.NextCursorMark, cursor)
			}
			break
		}
		for _, in := range p.Data {
			got = append(got, in.ID)
		}
		cursor = p.NextCursorMark
	}
	if !slices.Equal(got, ids) {
		t.Fatalf("paged %v, want %v", got, ids)
	}
	for _, bad := range []string{"nope", "AoJ9z5LKnvwCJjEwNjk2Nw=="} {
		a := c.api(http.MethodGet, "/api/indicators/query/hash/h?cursorMark="+url.QueryEscape(bad), "")
		if a.status != http.StatusBadRequest {
			t.Fatalf("cursor %q: %d", bad, a.status)
		}
	}
}

func TestCollectionName(t *testing.T) {
	sim, c := start(t, threatqsim.Options{})
	sim.AddCollection("h", "Phish IOCs", nil)
	c.login()
	a := c.api(http.MethodGet, "/api/search/query/h?fields=name", "")
	if string(a.body) != `{"data":{"name":"Phish IOCs"}}` {
		t.Fatalf("%d %s", a.status, a.body)
	}
	if a := c.api(http.MethodGet, "/api/search/query/other?fields=name", ""); a.status != 404 {
		t.Fatalf("unknown: %d", a.status)
	}
}

func TestSavedSearchListAndTheByHashKnob(t *testing.T) {
	sim, c := start(t, threatqsim.Options{})
	sim.AddCollection("h1", "One", nil)
	sim.AddCollection("h2", "Two", nil)
	sim.AddCollection("h3", "Three", nil)
	c.login()
	var doc struct {
		Total int `json:"total"`
		Data  []struct {
			ID   int64  `json:"id"`
			Name string `json:"name"`
			Hash string `json:"hash"`
		} `json:"data"`
	}
	a := c.api(http.MethodGet, "/api/search/query?limit=2&offset=1", "")
	if err := json.Unmarshal(a.body, &doc); err != nil || a.status != 200 {
		t.Fatalf("%d %s %v", a.status, a.body, err)
	}
	if doc.Total != 3 || len(doc.Data) != 2 || doc.Data[0].Hash != "h2" || doc.Data[1].Name != "Three" || doc.Data[0].ID >= doc.Data[1].ID {
		t.Fatalf("%+v", doc)
	}
	sim.SetSearchByHash(false)
	if a := c.api(http.MethodGet, "/api/search/query/h1?fields=name", ""); a.status != 404 {
		t.Fatalf("by hash while off: %d %s", a.status, a.body)
	}
	if n := sim.Counts(); n.SearchLists != 1 || n.CollectionNames != 0 {
		t.Fatalf("counts %+v", n)
	}
}

func TestAttributeCalls(t *testing.T) {
	sim, c := start(t, threatqsim.Options{})
	id := sim.AddCollection("h", "n", []threatqsim.SeedIndicator{{Type: "URL", Value: "https://x.example/"}})[0]
	c.login()
	path := "/api/indicators/" + itoa(id) + "/attributes"

	// One object without sources: the token's client is the source.
	if a := c.api(http.MethodPost, path, `{"name":"Threat Level","value":"Malicious"}`); a.status != http.StatusCreated {
		t.Fatalf("add: %d %s", a.status, a.body)
	}
	// An array, with sources.
	a := c.api(http.MethodPost, path, `[{"name":"ID","value":"325","sources":[{"name":"Cofense Triage"}]},{"name":"Threat Source","value":"ThreatQ","sources":[{"name":"Cofense Triage"}]}]`)
	var added wire.AttributeList
	if err := json.Unmarshal(a.body, &added); err != nil || a.status != http.StatusCreated || added.Total != 2 || len(added.Data) != 2 {
		t.Fatalf("add array: %d %s", a.status, a.body)
	}
	got := sim.Attributes(id)
	if len(got) != 3 || !slices.Equal(got[0].Sources, []string{threatqsim.DefaultClientID}) || !slices.Equal(got[1].Sources, []string{"Cofense Triage"}) {
		t.Fatalf("attributes %+v", got)
	}

	// Change in place.
	row := got[0].ID
	if a := c.api(http.MethodPut, path+"/"+itoa(row), `{"value":"Benign"}`); a.status != 200 {
		t.Fatalf("put: %d %s", a.status, a.body)
	}
	if got := sim.Attributes(id); got[0].ID != row || got[0].Value != "Benign" {
		t.Fatalf("after put %+v", got)
	}
	// A row of another indicator is not found through this one.
	other := sim.AddCollection("h2", "n", []threatqsim.SeedIndicator{{Type: "URL", Value: "https://y.example/"}})[0]
	if a := c.api(http.MethodPut, "/api/indicators/"+itoa(other)+"/attributes/"+itoa(row), `{"value":"x"}`); a.status != 404 {
		t.Fatalf("put through another indicator: %d", a.status)
	}
	// Remove.
	if a := c.api(http.MethodDelete, path+"/"+itoa(row), ""); a.status != http.StatusNoContent {
		t.Fatalf("delete: %d %s", a.status, a.body)
	}
	if a := c.api(http.MethodDelete, path+"/"+itoa(row), ""); a.status != 404 {
		t.Fatalf("second delete: %d", a.status)
	}
	if got := sim.Attributes(id); len(got) != 2 || got[0].Name != "ID" {
		t.Fatalf("after delete %+v", got)
	}
	// Validation of arrays names the element.
	a = c.api(http.MethodPost, path, `[{"name":"A","value":"1"},{"value":"2"}]`)
	if msgs := wire.ParseErrorBody(a.body); a.status != 422 || !slices.Equal(msgs, []string{"1.name: The name field is required."}) {
		t.Fatalf("%d %q", a.status, msgs)
	}
	if len(sim.Attributes(id)) != 2 {
		t.Fatal("a rejected array added rows")
	}
	// The page shows the attributes too.
	p := c.api(http.MethodGet, "/api/indicators/query/hash/h", "")
	if !strings.Contains(string(p.body), `"name":"Threat Source"`) {
		t.Fatalf("page %s lacks the attribute", p.body)
	}
	snap := sim.AllAttributes()
	if len(snap) != 1 || len(snap[id]) != 2 {
		t.Fatalf("snapshot %+v", snap)
	}
	n := sim.Counts()
	if n.AttributeAdds != 3 || n.AttributeChanges != 2 || n.AttributeDeletes != 2 {
		t.Fatalf("counts %+v", n)
	}
}

func TestOutageAndInjectedFailures(t *testing.T) {
	sim, c := start(t, threatqsim.Options{RetryAfter: 2 * time.Second})
	sim.AddCollection("h", "n", nil)
	c.login()

	sim.SetDown(true)
	if a := c.tokenRequest("grant_type=client_credentials", "application/x-www-form-urlencoded", "", &[2]string{threatqsim.DefaultClientID, threatqsim.DefaultClientSecret}); a.status != 503 || a.header.Get("Retry-After") != "2" {
		t.Fatalf("token while down: %d Retry-After %q", a.status, a.header.Get("Retry-After"))
	}
	if a := c.api(http.MethodGet, "/api/search/query/h", ""); a.status != 503 {
		t.Fatalf("API while down: %d", a.status)
	}
	sim.SetDown(false)
	if a := c.api(http.MethodGet, "/api/search/query/h", ""); a.status != 200 {
		t.Fatalf("API after the outage: %d", a.status)
	}

	sim.FailNext(2, http.StatusTooManyRequests)
	for i := range 2 {
		if a := c.api(http.MethodGet, "/api/search/query/h", ""); a.status != 429 {
			t.Fatalf("forced failure %d: %d", i, a.status)
		}
	}
	if a := c.api(http.MethodGet, "/api/search/query/h", ""); a.status != 200 {
		t.Fatalf("after forced failures: %d", a.status)
	}

	sim.SetErrorRate(1)
	for range 5 {
		if a := c.api(http.MethodGet, "/api/search/query/h", ""); a.status < 500 {
			t.Fatalf("error rate 1: %d", a.status)
		}
	}
	c.login() // the token endpoint is spared by the error rate
	sim.SetErrorRate(0)
	if n := sim.Counts().InjectedFailures; n != 2+2+5 {
		t.Fatalf("%d injected failures, want 9", n)
	}
}

func TestLatency(t *testing.T) {
	sim, c := start(t, threatqsim.Options{})
	sim.SetLatency(100 * time.Millisecond)
	start := time.Now()
	c.login()
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Fatalf("answered in %v", d)
	}
}

func TestGeneratedCollection(t *testing.T) {
	sim, c := start(t, threatqsim.Options{})
	const n = 1050
	first := sim.AddGeneratedCollection("big", "Generated", n, func(i int) (string, string) {
		return "MD5", strings.Repeat("0", 28) + itoa4(i)
	})
	c.login()
	var ids []int64
	cursor := "*"
	for pages := 0; ; pages++ {
		if pages > 5 {
			t.Fatal("too many pages")
		}
		a := c.api(http.MethodGet, "/api/indicators/query/hash/big?limit=500&cursorMark="+url.QueryEscape(cursor), "")
		var p wire.CollectionPage
		if err := json.Unmarshal(a.body, &p); err != nil {
			t.Fatal(err)
		}
		if len(p.Data) == 0 {
			break
		}
		for _, in := range p.Data {
			if in.Type != "MD5" || in.Value != strings.Repeat("0", 28)+itoa4(int(in.ID-first)) {
				t.Fatalf("indicator %+v", in)
			}
			ids = append(ids, in.ID)
		}
		cursor = p.NextCursorMark
	}
	if len(ids) != n || ids[0] != first || ids[n-1] != first+n-1 {
		t.Fatalf("%d ids from %d", len(ids), ids[0])
	}
	// Generated indicators take attributes like any other.
	if a := c.api(http.MethodPost, "/api/indicators/"+itoa(first+7)+"/attributes", `{"name":"A","value":"1"}`); a.status != 201 {
		t.Fatalf("%d %s", a.status, a.body)
	}
	if got := sim.Attributes(first + 7); len(got) != 1 {
		t.Fatalf("attributes %+v", got)
	}
	if a := c.api(http.MethodGet, "/api/indicators/"+itoa(first+n), ""); a.status != 404 {
		t.Fatalf("past the end: %d", a.status)
	}
}

func itoa4(i int) string {
	s := itoa(int64(i))
	return strings.Repeat("0", 4-len(s)) + s
}

func TestConcurrentUse(t *testing.T) {
	sim, c := start(t, threatqsim.Options{ErrorRate: 0.2})
	ids := sim.AddCollection("h", "n", []threatqsim.SeedIndicator{{Type: "MD5", Value: "a"}, {Type: "MD5", Value: "b"}})
	c.login()
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			path := "/api/indicators/" + itoa(ids[i%2]) + "/attributes"
			for range 20 {
				c.api(http.MethodPost, path, `{"name":"N","value":"v"}`)
				c.api(http.MethodGet, path, "")
				c.api(http.MethodGet, "/api/indicators/query/hash/h", "")
			}
		})
		wg.Go(func() {
			for range 20 {
				sim.SetLatency(0)
				_ = sim.AllAttributes()
				_ = sim.Counts()
			}
		})
	}
	wg.Wait()
	if sim.Counts().Requests < 8*60 {
		t.Fatalf("counts %+v", sim.Counts())
	}
}
