package threatq_test

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tqtriage/tqtriage/internal/httpclient"
	"github.com/tqtriage/tqtriage/internal/retry"
	"github.com/tqtriage/tqtriage/threatq"
	"github.com/tqtriage/tqtriage/threatq/threatqsim"
)

// fastRetry keeps retries quick in tests; the sim's failures are the same.
var fastRetry = retry.Policy{MaxAttempts: 5, InitialInterval: time.Millisecond, MaxInterval: 5 * time.Millisecond}

// startSim serves a simulator over HTTP for the test's lifetime.
func startSim(t *testing.T, opts threatqsim.Options) (*threatqsim.Server, string) {
	t.Helper()
	sim := threatqsim.New(opts)
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	return sim, srv.URL
}

// newClient returns a client of the sim with its default client
// credentials, changed by edit.
func newClient(t *testing.T, baseURL string, edit func(*threatq.Config)) *threatq.Client {
	t.Helper()
	cfg := threatq.Config{
		BaseURL:      baseURL,
		ClientID:     threatqsim.DefaultClientID,
		ClientSecret: threatqsim.DefaultClientSecret,
		Retry:        fastRetry,
	}
	if edit != nil {
		edit(&cfg)
	}
	c, err := threatq.New(t.Context(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

// readAll drains a collection, failing the test on an error.
func readAll(t *testing.T, c *threatq.Client, hash string, pageSize int) []threatq.Indicator {
	t.Helper()
	var out []threatq.Indicator
	for in, err := range c.CollectionIndicators(t.Context(), hash, pageSize) {
		if err != nil {
			t.Fatalf("after %d indicators: %v", len(out), err)
		}
		out = append(out, in)
	}
	return out
}

func seeds(n int) []threatqsim.SeedIndicator {
	types := []string{"MD5", "SHA-256", "URL", "FQDN"}
	out := make([]threatqsim.SeedIndicator, n)
	for i := range out {
		typ := types[i%len(types)]
		var v string
		switch typ {
		case "MD5":
			v = fmt.Sprintf("%032x", i)
		case "SHA-256":
			v = fmt.Sprintf("%064x", i)
		case "URL":
			v = fmt.Sprintf("https://example.com/path/%d", i)
		default:
			v = fmt.Sprintf("host%d.example.com", i)
		}
		out[i] = threatqsim.SeedIndicator{Type: typ, Value: v}
	}
	return out
}

func TestClientCredentialsTokenIsFetchedOnceAndCached(t *testing.T) {
	sim, url := startSim(t, threatqsim.Options{})
	sim.AddCollection("abc", "Phishing hashes", nil)
	c := newClient(t, url, nil)
	for range 3 {
		name, err := c.CollectionName(t.Context(), "abc")
		if err != nil {
			t.Fatal(err)
		}
		if name != "Phishing hashes" {
			t.Fatalf("name %q", name)
		}
	}
	if n := sim.Counts(); n.TokensIssued != 1 || n.CollectionNames != 3 {
		t.Fatalf("counts %+v, want one token for three calls", n)
	}
}

// TestCollectionNameFallsBackToTheSavedSearches: without the unconfirmed
// GET /api/search/query/{hash}, the name comes from listing the saved
// searches (as ThreatQuotient's SDK finds it), a bounded number of pages.
func TestCollectionNameFallsBackToTheSavedSearches(t *testing.T) {
	sim, url := startSim(t, threatqsim.Options{NoSearchByHash: true})
	for i := range 700 {
		sim.AddCollection(fmt.Sprintf("h%d", i), fmt.Sprintf("Collection %d", i), nil)
	}
	c := newClient(t, url, nil)

	name, err := c.CollectionName(t.Context(), "h230")
	if err != nil || name != "Collection 230" {
		t.Fatalf("got %q, %v", name, err)
	}
	if n := sim.Counts(); n.CollectionNames != 0 || n.SearchLists != 3 {
		t.Fatalf("counts %+v: want three pages of the listing", n)
	}

	// Beyond the bound it gives up: the name is optional.
	sim.ResetCounts()
	_, err = c.CollectionName(t.Context(), "h650")
	if !errors.Is(err, threatq.ErrNotFound) || !strings.Contains(err.Error(), "among the first 500 listed") {
		t.Fatalf("err %v", err)
	}
	if n := sim.Counts().SearchLists; n != 5 {
		t.Fatalf("%d pages listed; want the bound of 5", n)
	}

	// With the endpoint, one request; without it, the listing again.
	sim.SetSearchByHash(true)
	sim.ResetCounts()
	if name, err := c.CollectionName(t.Context(), "h650"); err != nil || name != "Collection 650" {
		t.Fatalf("got %q, %v", name, err)
	}
	if n := sim.Counts(); n.CollectionNames != 1 || n.SearchLists != 0 {
		t.Fatalf("counts %+v", n)
	}
}

func TestPasswordGrant(t *testing.T) {
	sim, url := startSim(t, threatqsim.Options{})
	sim.AddCollection("abc", "From the password grant", nil)
	c := newClient(t, url, func(cfg *threatq.Config) {
		cfg.ClientSecret = ""
		cfg.Email, cfg.Password = threatqsim.DefaultEmail, threatqsim.DefaultPassword
	})
	name, err := c.CollectionName(t.Context(), "abc")
	if err != nil || name != "From the password grant" {
		t.Fatalf("got %q, %v", name, err)
	}
	if n := sim.Counts().TokensIssued; n != 1 {
		t.Fatalf("%d tokens issued", n)
	}
}

func TestWrongCredentialsAreAnAuthenticationErrorWithoutTheSecret(t *testing.T) {
	_, url := startSim(t, threatqsim.Options{})
	const secret = "wrong-secret-x7Q9"
	const password = "wrong-password-K3v8"
	cases := map[string]func(*threatq.Config){
		"client credentials": func(cfg *threatq.Config) { cfg.ClientSecret = secret },
		"password": func(cfg *threatq.Config) {
			cfg.ClientSecret = ""
			cfg.Email, cfg.Password = threatqsim.DefaultEmail, password
		},
	}
	for name, edit := range cases {
		t.Run(name, func(t *testing.T) {
			c := newClient(t, url, edit)
			err := c.Ping(t.Context())
			if !errors.Is(err, threatq.ErrAuthentication) {
				t.Fatalf("err %v, want ErrAuthentication", err)
			}
			msg := err.Error()
			if strings.Contains(msg, secret) || strings.Contains(msg, password) {
				t.Fatalf("error text holds a secret: %s", msg)
			}
			if !strings.Contains(msg, "/api/token") || !(strings.Contains(msg, "invalid_client") || strings.Contains(msg, "invalid_grant")) {
				t.Fatalf("error text does not say what failed: %s", msg)
			}
		})
	}
}

func TestLowercaseTokenTypeStillSendsCapitalBearer(t *testing.T) {
	// The sim answers token_type "bearer" and, like ThreatQ, rejects
	// "Authorization: bearer …": success proves the capital B.
	sim, url := startSim(t, threatqsim.Options{TokenType: "bearer"})
	sim.AddCollection("abc", "n", seeds(3))
	c := newClient(t, url, nil)
	if got := readAll(t, c, "abc", 0); len(got) != 3 {
		t.Fatalf("read %d indicators", len(got))
	}
	if n := sim.Counts().Unauthorized; n != 0 {
		t.Fatalf("%d requests answered 401", n)
	}
}

func TestCollectionIndicatorsPagesThroughEverything(t *testing.T) {
	sim, url := startSim(t, threatqsim.Options{})
	want := seeds(250)
	ids := sim.AddCollection("abc", "n", want)
	c := newClient(t, url, nil)
	got := readAll(t, c, "abc", 100)
	if len(got) != len(want) {
		t.Fatalf("read %d indicators, want %d", len(got), len(want))
	}
	for i, in := range got {
		if in.ID != ids[i] || in.Type != want[i].Type || in.Value != want[i].Value {
			t.Fatalf("indicator %d: got %+v, want id %d %s %s", i, in, ids[i], want[i].Type, want[i].Value)
		}
	}
	// Three full-or-partial pages, then the "data": {} page that ends it.
	if n := sim.Counts().CollectionPages; n != 4 {
		t.Fatalf("%d page requests, want 4", n)
	}
}

func TestCollectionEndsOnEmptyObjectPage(t *testing.T) {
	cases := []struct {
		name      string
		n, size   int
		wantPages int64
	}{
		{"empty collection", 0, 100, 1},
		{"exact multiple of the page size", 200, 100, 3},
		{"one short page", 7, 100, 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sim, url := startSim(t, threatqsim.Options{})
			sim.AddCollection("h", "n", seeds(tc.n))
			got := readAll(t, newClient(t, url, nil), "h", tc.size)
			if len(got) != tc.n {
				t.Fatalf("read %d, want %d", len(got), tc.n)
			}
			if n := sim.Counts().CollectionPages; n != tc.wantPages {
				t.Fatalf("%d page requests, want %d", n, tc.wantPages)
			}
		})
	}
}

func TestPageSizeIsCappedAt500(t *testing.T) {
	sim, url := startSim(t, threatqsim.Options{MaxPageSize: 5000})
	sim.AddCollection("h", "n", seeds(1200))
	got := readAll(t, newClient(t, url, nil), "h", 10_000)
	if len(got) != 1200 {
		t.Fatalf("read %d", len(got))
	}
	// 500 + 500 + 200, then the empty page.
	if n := sim.Counts().CollectionPages; n != 4 {
		t.Fatalf("%d page requests, want 4 (limit 500)", n)
	}
}

func TestPagingContinuesAfterTokensAreRevoked(t *testing.T) {
	sim, url := startSim(t, threatqsim.Options{})
	sim.AddCollection("h", "n", seeds(50))
	c := newClient(t, url, nil)
	n := 0
	for _, err := range c.CollectionIndicators(t.Context(), "h", 10) {
		if err != nil {
			t.Fatal(err)
		}
		n++
		if n == 15 { // mid-collection: every token stops working
			sim.ExpireTokens()
		}
	}
	counts := sim.Counts()
	if n != 50 || counts.Unauthorized != 1 || counts.TokensIssued != 2 {
		t.Fatalf("read %d, counts %+v; want 50, one 401, two tokens", n, counts)
	}
}

func TestPagingContinuesAcrossTokenExpiry(t *testing.T) {
	// Tokens live 1.2 s (expires_in 1); the read takes longer, so the client
	// must renew before expiry or after a 401, without losing its place.
	sim, url := startSim(t, threatqsim.Options{TokenLifetime: 1200 * time.Millisecond, Latency: 40 * time.Millisecond})
	want := seeds(400)
	sim.AddCollection("h", "n", want)
	start := time.Now()
	got := readAll(t, newClient(t, url, nil), "h", 10)
	if len(got) != len(want) {
		t.Fatalf("read %d, want %d", len(got), len(want))
	}
	// Renewed ahead of expiry (a tenth of expires_in early), so no call
	// ever met a 401.
	if n := sim.Counts(); n.TokensIssued < 2 || n.Unauthorized != 0 {
		t.Fatalf("counts %+v in %v, want a renewal before expiry", n, time.Since(start))
	}
}

func TestPagingRetriesPastServerErrors(t *testing.T) {
	sim, url := startSim(t, threatqsim.Options{})
	want := seeds(30)
	sim.AddCollection("h", "n", want)
	c := newClient(t, url, nil)
	var got []threatq.Indicator
	for in, err := range c.CollectionIndicators(t.Context(), "h", 10) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, in)
		if len(got) == 12 { // the third page's request will fail twice
			sim.FailNext(1, http.StatusServiceUnavailable)
			sim.FailNext(1, http.StatusBadGateway)
		}
	}
	if len(got) != 30 || sim.Counts().InjectedFailures != 2 {
		t.Fatalf("read %d with %d failures, want 30 past 2", len(got), sim.Counts().InjectedFailures)
	}
	seen := map[int64]bool{}
	for _, in := range got {
		if seen[in.ID] {
			t.Fatalf("indicator %d read twice", in.ID)
		}
		seen[in.ID] = true
	}
}

func TestPagingStopsWithAnErrorWhenRetriesRunOut(t *testing.T) {
	sim, url := startSim(t, threatqsim.Options{})
	sim.AddCollection("h", "n", seeds(30))
	c := newClient(t, url, func(cfg *threatq.Config) {
		cfg.Retry = retry.Policy{MaxAttempts: 3, InitialInterval: time.Millisecond, MaxInterval: time.Millisecond}
	})
	var read int
	var errs []error
	for _, err := range c.CollectionIndicators(t.Context(), "h", 10) {
		if err != nil {
			errs = append(errs, err)
			continue
		}
		read++
		if read == 10 {
			sim.FailNext(3, http.StatusInternalServerError)
		}
	}
	if read != 10 || len(errs) != 1 {
		t.Fatalf("read %d and %d errors, want 10 then one error", read, len(errs))
	}
	var e *threatq.Error
	if !errors.As(errs[0], &e) || e.StatusCode != 500 || !errors.Is(errs[0], threatq.ErrUnavailable) {
		t.Fatalf("error %v, want a 500 *threatq.Error", errs[0])
	}
	if !strings.Contains(errs[0].Error(), "page 2") {
		t.Fatalf("error does not say which page: %v", errs[0])
	}
}

func TestHonoursRetryAfter(t *testing.T) {
	sim, url := startSim(t, threatqsim.Options{RetryAfter: time.Second})
	sim.AddCollection("h", "n", nil)
	c := newClient(t, url, nil)
	sim.FailNext(1, http.StatusTooManyRequests)
	start := time.Now()
	if _, err := c.CollectionName(t.Context(), "h"); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < time.Second {
		t.Fatalf("retried after %v, want at least the 1 s Retry-After", d)
	}
}

func TestStoppingEarlySendsNoMoreRequests(t *testing.T) {
	sim, url := startSim(t, threatqsim.Options{})
	sim.AddCollection("h", "n", seeds(100))
	c := newClient(t, url, nil)
	for range c.CollectionIndicators(t.Context(), "h", 10) {
		break
	}
	if n := sim.Counts().CollectionPages; n != 1 {
		t.Fatalf("%d page requests after breaking at once", n)
	}
}

func TestUnknownCollectionIsNotFound(t *testing.T) {
	_, url := startSim(t, threatqsim.Options{})
	c := newClient(t, url, nil)
	_, err := c.CollectionName(t.Context(), "nope")
	if !errors.Is(err, threatq.ErrNotFound) || !strings.Contains(err.Error(), "could not be found") {
		t.Fatalf("err %v", err)
	}
	for _, err := range c.CollectionIndicators(t.Context(), "nope", 0) {
		if !errors.Is(err, threatq.ErrNotFound) {
			t.Fatalf("err %v", err)
		}
	}
}

// --- write-back ------------------------------------------------------------

func oneIndicator(t *testing.T, sim *threatqsim.Server, attrs ...threatqsim.SeedAttribute) int64 {
	t.Helper()
	return sim.AddCollection("h", "n", []threatqsim.SeedIndicator{{Type: "SHA-256", Value: strings.Repeat("ab", 32), Attributes: attrs}})[0]
}

func TestSetAttributesAddsAbsentNamesWithTheConfiguredSource(t *testing.T) {
	sim, url := startSim(t, threatqsim.Options{})
	id := oneIndicator(t, sim, threatqsim.SeedAttribute{Name: "Country", Value: "US"})
	c := newClient(t, url, func(cfg *threatq.Config) { cfg.AttributeSource = "Triage Test Source" })
	err := c.SetAttributes(t.Context(), id, []threatq.Attribute{{Name: "Threat Level", Value: "Malicious"}, {Name: "ID", Value: "325"}})
	if err != nil {
		t.Fatal(err)
	}
	got := sim.Attributes(id)
	if len(got) != 3 {
		t.Fatalf("attributes %+v", got)
	}
	for _, a := range got[1:] {
		if !slices.Equal(a.Sources, []string{"Triage Test Source"}) {
			t.Fatalf("%s has sources %v", a.Name, a.Sources)
		}
	}
	if got[0].Name != "Country" || got[0].Value != "US" {
		t.Fatalf("an attribute not named was touched: %+v", got[0])
	}
	// Both absent names go in one POST of an array.
	if n := sim.Counts(); n.AttributeLists != 1 || n.AttributeAdds != 1 || n.AttributeChanges != 0 {
		t.Fatalf("counts %+v", n)
	}
}

// A ThreatQ that refuses an array of attributes gets them one a request,
// and no array again from that client; what is written is the same.
func TestSetAttributesFallsBackToOneAddARequestWhereArraysAreRefused(t *testing.T) {
	sim, url := startSim(t, threatqsim.Options{NoAttributeArrays: true})
	ids := sim.AddCollection("h", "n", []threatqsim.SeedIndicator{
		{Type: "SHA-256", Value: strings.Repeat("ab", 32)},
		{Type: "SHA-256", Value: strings.Repeat("cd", 32)},
	})
	c := newClient(t, url, nil)
	attrs := []threatq.Attribute{{Name: "Threat Level", Value: "Malicious"}, {Name: "ID", Value: "325"}, {Name: "Threat Source", Value: "ThreatQ"}}
	if err := c.SetAttributesKnown(t.Context(), ids[0], attrs, []threatq.AttributeRow{}); err != nil {
		t.Fatal(err)
	}
	// The refused array, then three single adds.
	if n := sim.Counts(); n.AttributeAdds != 4 || n.AttributeLists != 0 {
		t.Fatalf("first indicator: counts %+v, want the array and three adds", n)
	}
	sim.ResetCounts()
	if err := c.SetAttributesKnown(t.Context(), ids[1], attrs, []threatq.AttributeRow{}); err != nil {
		t.Fatal(err)
	}
	if n := sim.Counts(); n.AttributeAdds != 3 {
		t.Fatalf("second indicator: counts %+v, want three adds and no array", n)
	}
	for _, id := range ids {
		got := sim.Attributes(id)
		if len(got) != 3 {
			t.Fatalf("indicator %d: attributes %+v", id, got)
		}
		for i, a := range got {
			if a.Name != attrs[i].Name || a.Value != attrs[i].Value {
				t.Fatalf("indicator %d: attributes %+v, want %+v", id, got, attrs)
			}
		}
	}
}

// An array refused for what it holds (a value ThreatQ will not take) is
// not the form refused: the single adds fail the same way, and the
// client goes on sending arrays.
func TestSetAttributesKeepsArraysWhenTheSingleAddsFailToo(t *testing.T) {
	sim, url := startSim(t, threatqsim.Options{})
	ids := sim.AddCollection("h", "n", []threatqsim.SeedIndicator{
		{Type: "SHA-256", Value: strings.Repeat("ab", 32)},
		{Type: "SHA-256", Value: strings.Repeat("cd", 32)},
	})
	c := newClient(t, url, nil)
	attrs := []threatq.Attribute{{Name: "Threat Level", Value: "Malicious"}, {Name: "ID", Value: "325"}}
	sim.FailNext(2, http.StatusUnprocessableEntity)
	if err := c.SetAttributesKnown(t.Context(), ids[0], attrs, []threatq.AttributeRow{}); err == nil {
		t.Fatal("no error")
	}
	sim.ResetCounts()
	if err := c.SetAttributesKnown(t.Context(), ids[1], attrs, []threatq.AttributeRow{}); err != nil {
		t.Fatal(err)
	}
	if n := sim.Counts(); n.AttributeAdds != 1 {
		t.Fatalf("counts %+v, want one array", n)
	}
}

func TestDefaultAttributeSource(t *testing.T) {
	sim, url := startSim(t, threatqsim.Options{})
	id := oneIndicator(t, sim)
	c := newClient(t, url, nil)
	if err := c.SetAttributes(t.Context(), id, []threatq.Attribute{{Name: "Threat Level", Value: "Benign"}}); err != nil {
		t.Fatal(err)
	}
	if got := sim.Attributes(id); len(got) != 1 || !slices.Equal(got[0].Sources, []string{"Cofense Triage"}) {
		t.Fatalf("attributes %+v", got)
	}
}

func TestSetAttributesChangesTheExistingRowInPlaceAndIsIdempotent(t *testing.T) {
	sim, url := startSim(t, threatqsim.Options{})
	id := oneIndicator(t, sim,
		threatqsim.SeedAttribute{Name: "Threat Level", Value: "Suspicious"},
		threatqsim.SeedAttribute{Name: "Threat Source", Value: "ThreatQ"})
	before := sim.Attributes(id)
	c := newClient(t, url, nil)
	want := []threatq.Attribute{{Name: "Threat Level", Value: "Malicious"}, {Name: "Threat Source", Value: "ThreatQ"}}

	if err := c.SetAttributes(t.Context(), id, want); err != nil {
		t.Fatal(err)
	}
	after := sim.Attributes(id)
	if len(after) != 2 || after[0].ID != before[0].ID || after[0].Value != "Malicious" || after[1].ID != before[1].ID {
		t.Fatalf("before %+v, after %+v: want row %d changed in place", before, after, before[0].ID)
	}
	if n := sim.Counts(); n.AttributeChanges != 1 || n.AttributeAdds != 0 || n.AttributeDeletes != 0 {
		t.Fatalf("first write: counts %+v, want one PUT", n)
	}

	sim.ResetCounts()
	if err := c.SetAttributes(t.Context(), id, want); err != nil {
		t.Fatal(err)
	}
	if n := sim.Counts(); n.AttributeChanges != 0 || n.AttributeAdds != 0 || n.AttributeDeletes != 0 || n.AttributeLists != 1 {
		t.Fatalf("second write: counts %+v, want one list and no write", n)
	}
	again := sim.Attributes(id)
	if !slices.EqualFunc(after, again, func(a, b threatqsim.Attribute) bool { return a.ID == b.ID && a.Value == b.Value }) {
		t.Fatalf("second write changed %+v into %+v", after, again)
	}
	got, err := c.Attributes(t.Context(), id)
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("Attributes: %+v, %v", got, err)
	}
}

func TestSetAttributesLeavesOneRowPerName(t *testing.T) {
	cases := []struct {
		name       string
		rows       []string // values of existing "Threat Level" rows, in row order
		want       string
		keepRow    int // index into rows of the row that must survive
		puts, dels int64
	}{
		{"one row holds the value", []string{"Benign", "Malicious", "Suspicious"}, "Malicious", 1, 0, 2},
		{"no row holds the value", []string{"Benign", "Suspicious"}, "Malicious", 0, 1, 1},
		{"two rows hold the value", []string{"Malicious", "Malicious"}, "Malicious", 0, 0, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sim, url := startSim(t, threatqsim.Options{})
			id := oneIndicator(t, sim)
			var rowIDs []int64
			for _, v := range tc.rows {
				row, err := sim.AddAttribute(id, "Threat Level", v, "someone")
				if err != nil {
					t.Fatal(err)
				}
				rowIDs = append(rowIDs, row)
			}
			c := newClient(t, url, nil)
			if err := c.SetAttributes(t.Context(), id, []threatq.Attribute{{Name: "Threat Level", Value: tc.want}}); err != nil {
				t.Fatal(err)
			}
			got := sim.Attributes(id)
			if len(got) != 1 || got[0].ID != rowIDs[tc.keepRow] || got[0].Value != tc.want {
				t.Fatalf("rows %+v, want only row %d = %s", got, rowIDs[tc.keepRow], tc.want)
			}
			if n := sim.Counts(); n.AttributeChanges != tc.puts || n.AttributeDeletes != tc.dels || n.AttributeAdds != 0 {
				t.Fatalf("counts %+v", n)
			}
		})
	}
}

func TestSetAttributesRejectsBadInputBeforeAnyRequest(t *testing.T) {
	sim, url := startSim(t, threatqsim.Options{})
	id := oneIndicator(t, sim)
	c := newClient(t, url, nil)
	for _, attrs := range [][]threatq.Attribute{
		{{Name: "", Value: "x"}},
		{{Name: "A", Value: "1"}, {Name: "A", Value: "2"}},
	} {
		if err := c.SetAttributes(t.Context(), id, attrs); !errors.Is(err, threatq.ErrInvalidArgument) {
			t.Fatalf("%+v: err %v", attrs, err)
		}
	}
	if n := sim.Counts().Requests; n != 0 {
		t.Fatalf("%d requests", n)
	}
}

func TestErrorBodiesOfBothShapesBecomeReadableErrors(t *testing.T) {
	sim, url := startSim(t, threatqsim.Options{})
	id := oneIndicator(t, sim)
	c := newClient(t, url, nil)

	// {"data":{"errors":{"value":["…"]}}}
	err := c.SetAttributes(t.Context(), id, []threatq.Attribute{{Name: "Threat Level", Value: ""}})
	var e *threatq.Error
	if !errors.As(err, &e) || e.StatusCode != http.StatusUnprocessableEntity {
		t.Fatalf("err %v, want a 422 *threatq.Error", err)
	}
	if !slices.Equal(e.Messages, []string{"value: The value field is required."}) {
		t.Fatalf("messages %q", e.Messages)
	}
	if !strings.Contains(err.Error(), `POST /api/indicators/`) || !strings.Contains(err.Error(), "422 Unprocessable Entity: value: The value field is required.") {
		t.Fatalf("error text %q", err)
	}
	if e.Retryable() {
		t.Fatal("a 422 is retryable")
	}

	// {"errors":["…"]}
	_, err = c.Attributes(t.Context(), id+1_000_000_000)
	if !errors.As(err, &e) || !errors.Is(err, threatq.ErrNotFound) || !slices.Equal(e.Messages, []string{"The requested indicator could not be found."}) {
		t.Fatalf("err %v", err)
	}
}

// TestErrorsInASuccessfulAnswerAreAFailure: a 2xx answer whose body
// carries errors failed, as ThreatQuotient's SDK reads it; it is retried
// only when its errors name a status that is worth another try.
func TestErrorsInASuccessfulAnswerAreAFailure(t *testing.T) {
	sim, url := startSim(t, threatqsim.Options{})
	id := oneIndicator(t, sim)
	c := newClient(t, url, nil)
	if err := c.Ping(t.Context()); err != nil {
		t.Fatal(err)
	}
	attrs := []threatq.Attribute{{Name: "Threat Level", Value: "Malicious"}}

	sim.ErrorsInOKNext(1, 0, "The indicator is locked.")
	err := c.SetAttributes(t.Context(), id, attrs)
	var e *threatq.Error
	if !errors.As(err, &e) || !e.InBody || e.StatusCode != http.StatusOK || !errors.Is(err, threatq.ErrAnswerErrors) {
		t.Fatalf("err %v, want a 200 with errors in its body", err)
	}
	if e.Retryable() || retry.IsRetryable(err) {
		t.Fatalf("errors that name no status are retryable: %v", err)
	}
	if !strings.Contains(err.Error(), "200 OK with errors in its body: The indicator is locked.") {
		t.Fatalf("error text %q", err)
	}
	if n := sim.Counts(); n.AttributeLists != 0 || n.InjectedFailures != 1 || len(sim.Attributes(id)) != 0 {
		t.Fatalf("tried again or wrote: %+v", n)
	}

	// Errors that name a status worth another try are retried like it.
	sim.ErrorsInOKNext(1, http.StatusServiceUnavailable, "Try again later")
	if err := c.SetAttributes(t.Context(), id, attrs); err != nil {
		t.Fatal(err)
	}
	if got := sim.Attributes(id); len(got) != 1 || got[0].Value != "Malicious" || sim.Counts().InjectedFailures != 2 {
		t.Fatalf("attributes %+v, counts %+v", got, sim.Counts())
	}
	// ... and match that status's sentinel.
	sim.ErrorsInOKNext(1, http.StatusNotFound, "gone")
	if _, err := c.Attributes(t.Context(), id); !errors.Is(err, threatq.ErrNotFound) || !errors.Is(err, threatq.ErrAnswerErrors) || retry.IsRetryable(err) {
		t.Fatalf("err %v", err)
	}
}

func TestTokenFetchIsSingleFlight(t *testing.T) {
	sim, url := startSim(t, threatqsim.Options{Latency: 20 * time.Millisecond})
	id := oneIndicator(t, sim)
	c := newClient(t, url, nil)
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for range 32 {
		wg.Go(func() {
			if _, err := c.Attributes(context.Background(), id); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := sim.Counts(); n.TokensIssued != 1 || n.TokenRequests != 1 {
		t.Fatalf("counts %+v, want one token for 32 concurrent calls", n)
	}

	// After a revocation, the concurrent 401s cause one new token, not 32.
	sim.ExpireTokens()
	for range 32 {
		wg.Go(func() {
			if _, err := c.Attributes(context.Background(), id); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := sim.Counts().TokensIssued; n != 2 {
		t.Fatalf("%d tokens after revocation, want 2", n)
	}
}

// --- TLS, config and secrets ------------------------------------------------

func TestCustomCAFile(t *testing.T) {
	sim := threatqsim.New(threatqsim.Options{})
	sim.AddCollection("h", "Over TLS", nil)
	srv := httptest.NewTLSServer(sim)
	t.Cleanup(srv.Close)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(caFile, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}

	t.Run("default verification refuses the unknown CA, without retrying", func(t *testing.T) {
		c := newClient(t, srv.URL, nil)
		_, err := c.CollectionName(t.Context(), "h")
		if err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("err %v, want a certificate error", err)
		}
		if retry.IsRetryable(err) {
			t.Fatalf("a certificate error is retryable: %v", err)
		}
	})
	t.Run("trusting the CA file", func(t *testing.T) {
		c := newClient(t, srv.URL, func(cfg *threatq.Config) { cfg.HTTP = httpclient.Options{CAFile: caFile} })
		name, err := c.CollectionName(t.Context(), "h")
		if err != nil || name != "Over TLS" {
			t.Fatalf("got %q, %v", name, err)
		}
	})
	t.Run("verification off", func(t *testing.T) {
		c := newClient(t, srv.URL, func(cfg *threatq.Config) { cfg.HTTP = httpclient.Options{InsecureSkipVerify: true} })
		if _, err := c.CollectionName(t.Context(), "h"); err != nil {
			t.Fatal(err)
		}
	})
}

// TestTransportFailuresFollowTheSharedRule: what the client makes of a
// failure to get an answer is httpclient.TransportRetryable's verdict.
func TestTransportFailuresFollowTheSharedRule(t *testing.T) {
	sim := threatqsim.New(threatqsim.Options{})
	sim.AddCollection("h", "n", nil)
	srv := httptest.NewUnstartedServer(sim)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the TLS hello on a plain port is expected
	srv.Start()
	t.Cleanup(srv.Close)
	once := func(cfg *threatq.Config) { cfg.Retry = retry.None }

	t.Run("https to a plain HTTP port", func(t *testing.T) {
		c := newClient(t, "https://"+srv.Listener.Addr().String(), once)
		_, err := c.CollectionName(t.Context(), "h")
		var e *threatq.Error
		if !errors.As(err, &e) || e.StatusCode != 0 || e.Retryable() || errors.Is(err, threatq.ErrUnavailable) {
			t.Fatalf("err %v, want a transport error that no retry fixes", err)
		}
	})
	t.Run("the client's own timeout", func(t *testing.T) {
		c := newClient(t, srv.URL, func(cfg *threatq.Config) {
			once(cfg)
			cfg.HTTP = httpclient.Options{Timeout: 50 * time.Millisecond}
		})
		if err := c.Ping(t.Context()); err != nil { // the token, before the latency
			t.Fatal(err)
		}
		sim.SetLatency(time.Second)
		defer sim.SetLatency(0)
		_, err := c.CollectionName(t.Context(), "h")
		var e *threatq.Error
		if !errors.As(err, &e) || !e.Retryable() || !errors.Is(err, threatq.ErrUnavailable) {
			t.Fatalf("err %v, want a retryable ErrUnavailable", err)
		}
	})
}

func TestNewExplainsMissingConfig(t *testing.T) {
	cases := []struct {
		name string
		cfg  threatq.Config
		want string
	}{
		{"no base URL", threatq.Config{ClientID: "a", ClientSecret: "b"}, "missing BaseURL"},
		{"not http", threatq.Config{BaseURL: "ftp://x", ClientID: "a", ClientSecret: "b"}, "not an http(s) address"},
		{"credentials in the URL", threatq.Config{BaseURL: "https://u:hunter2@x", ClientID: "a", ClientSecret: "b"}, "must not carry credentials"},
		{"no client id", threatq.Config{BaseURL: "https://x", ClientSecret: "b"}, "missing ClientID"},
		{"no secret", threatq.Config{BaseURL: "https://x", ClientID: "a"}, "ClientSecret (or Email and Password)"},
		{"email without password", threatq.Config{BaseURL: "https://x", ClientID: "a", Email: "e@x"}, "Password (an Email is set)"},
		{"missing CA file", threatq.Config{BaseURL: "https://x", ClientID: "a", ClientSecret: "b", HTTP: httpclient.Options{CAFile: "/nonexistent/ca.pem"}}, "read CA file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := threatq.New(t.Context(), tc.cfg)
			if !errors.Is(err, threatq.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want ErrInvalidConfig saying %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Fatalf("error holds the password: %v", err)
			}
		})
	}
}

func TestBaseURLMayEndInSlashOrAPI(t *testing.T) {
	sim, url := startSim(t, threatqsim.Options{})
	sim.AddCollection("h", "n", nil)
	for _, base := range []string{url + "/", url + "/api", url + "/api/"} {
		if _, err := newClient(t, base, nil).CollectionName(t.Context(), "h"); err != nil {
			t.Fatalf("%s: %v", base, err)
		}
	}
}

func TestConfigPrintsWithoutSecrets(t *testing.T) {
	cfg := threatq.Config{BaseURL: "https://x", ClientID: "id", ClientSecret: "s3cr3t-value", Password: "pa55-value"}
	for _, s := range []string{fmt.Sprint(cfg), fmt.Sprintf("%+v", cfg), fmt.Sprintf("%#v", cfg), fmt.Sprintf("%v", &cfg)} {
		if strings.Contains(s, "s3cr3t-value") || strings.Contains(s, "pa55-value") {
			t.Fatalf("printed config holds a secret: %s", s)
		}
	}
}

func TestSecretsAreMaskedEvenWhenAServerEchoesThem(t *testing.T) {
	// Not ThreatQ: a hostile or broken server that quotes the request
	// back. The client must not pass the secrets on in its errors.
	const secret, password = "echo-secret-9f8e", "echo-password-7d6c"
	echo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		_, pw, _ := r.BasicAuth()
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintf(w, `{"errors":["bad secret %s","bad password %s"]}`, pw, r.PostForm.Get("password"))
	})
	srv := httptest.NewServer(echo)
	t.Cleanup(srv.Close)
	for _, edit := range []func(*threatq.Config){
		func(cfg *threatq.Config) { cfg.ClientSecret = secret },
		func(cfg *threatq.Config) { cfg.ClientSecret, cfg.Email, cfg.Password = "", "e@x", password },
	} {
		err := newClient(t, srv.URL, edit).Ping(t.Context())
		if err == nil || strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), password) {
			t.Fatalf("error %v", err)
		}
		if !strings.Contains(err.Error(), "[redacted]") {
			t.Fatalf("error %v does not show the masking", err)
		}
	}
}

func TestReadsThroughRandomServerErrors(t *testing.T) {
	// A fifth of API calls fail; with eight attempts a call fails for good
	// once in 390,000, and the seed makes the run repeatable anyway.
	sim, url := startSim(t, threatqsim.Options{ErrorRate: 0.2, Seed: 42})
	want := seeds(300)
	ids := sim.AddCollection("h", "n", want)
	c := newClient(t, url, func(cfg *threatq.Config) { cfg.Retry.MaxAttempts = 8 })
	if got := readAll(t, c, "h", 20); len(got) != len(want) {
		t.Fatalf("read %d, want %d", len(got), len(want))
	}
	for _, id := range ids[:20] {
		if err := c.SetAttributes(t.Context(), id, []threatq.Attribute{{Name: "Threat Level", Value: "Malicious"}}); err != nil {
			t.Fatal(err)
		}
	}
	if n := sim.Counts().InjectedFailures; n == 0 {
		t.Fatal("no failure was injected")
	}
	for _, id := range ids[:20] {
		if got := sim.Attributes(id); len(got) != 1 {
			t.Fatalf("indicator %d: %+v", id, got)
		}
	}
}

func TestWriteBackDuringAnOutageIsRetryableAndCompletesAfterwards(t *testing.T) {
	sim, url := startSim(t, threatqsim.Options{})
	id := oneIndicator(t, sim, threatqsim.SeedAttribute{Name: "Threat Level", Value: "Benign"})
	c := newClient(t, url, func(cfg *threatq.Config) { cfg.Retry.MaxAttempts = 2 })
	attrs := []threatq.Attribute{{Name: "Threat Level", Value: "Malicious"}, {Name: "ID", Value: "9"}}

	sim.SetDown(true)
	err := c.SetAttributes(t.Context(), id, attrs)
	if !errors.Is(err, threatq.ErrUnavailable) || !retry.IsRetryable(err) {
		t.Fatalf("err %v, want a retryable ErrUnavailable", err)
	}
	sim.SetDown(false)
	if err := c.SetAttributes(t.Context(), id, attrs); err != nil {
		t.Fatal(err)
	}
	got := sim.Attributes(id)
	if len(got) != 2 || got[0].Value != "Malicious" || got[1].Name != "ID" {
		t.Fatalf("attributes %+v", got)
	}
}

func TestCancelledReadEndsWithTheContextError(t *testing.T) {
	sim, url := startSim(t, threatqsim.Options{})
	sim.AddCollection("h", "n", seeds(50))
	c := newClient(t, url, nil)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	n := 0
	var last error
	for _, err := range c.CollectionIndicators(ctx, "h", 10) {
		if err != nil {
			last = err
			continue
		}
		n++
		if n == 5 {
			cancel()
		}
	}
	if n != 10 || !errors.Is(last, context.Canceled) {
		t.Fatalf("read %d then %v; want the first page, then context.Canceled", n, last)
	}
}

func TestMissingCursorIsAnErrorNotAShortCollection(t *testing.T) {
	// Not ThreatQ: a server that pages without nextCursorMark. Stopping
	// after its first page would pass 1 of 5 indicators off as all.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Path == "/api/token" {
			fmt.Fprint(w, `{"access_token":"t","token_type":"Bearer","expires_in":3600}`)
			return
		}
		fmt.Fprint(w, `{"total":5,"data":[{"id":1,"type":{"name":"MD5"},"value":"a"}],"limit":100}`)
	}))
	t.Cleanup(srv.Close)
	var n int
	var last error
	for _, err := range newClient(t, srv.URL, nil).CollectionIndicators(t.Context(), "h", 0) {
		if err != nil {
			last = err
			continue
		}
		n++
	}
	if n != 1 || !errors.Is(last, threatq.ErrUnexpectedResponse) || !strings.Contains(last.Error(), "1 of 5") {
		t.Fatalf("read %d, then %v", n, last)
	}
}

// TestRedirectOnAWriteIsAnErrorNotASuccess: a 301/302 would turn the POST
// of an attribute into a GET that answers 200; the write did not happen,
// so the call must fail, naming where it was sent.
func TestRedirectOnAWriteIsAnErrorNotASuccess(t *testing.T) {
	var posts, gets atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/token", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"access_token":"tok","token_type":"Bearer","expires_in":3600}`)
	})
	mux.HandleFunc("GET /api/indicators/7/attributes", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"total":0,"data":[]}`)
	})
	mux.HandleFunc("POST /api/indicators/7/attributes", func(w http.ResponseWriter, r *http.Request) {
		posts.Add(1)
		http.Redirect(w, r, "/elsewhere", http.StatusFound)
	})
	mux.HandleFunc("GET /elsewhere", func(w http.ResponseWriter, r *http.Request) {
		gets.Add(1)
		fmt.Fprint(w, `{"data":[]}`)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	c, err := threatq.New(context.Background(), threatq.Config{BaseURL: srv.URL, ClientID: "id", ClientSecret: "secret", Retry: retry.None})
	if err != nil {
		t.Fatal(err)
	}
	err = c.SetAttributes(context.Background(), 7, []threatq.Attribute{{Name: "ID", Value: "1"}})
	if err == nil || !strings.Contains(err.Error(), "302") || !strings.Contains(err.Error(), "/elsewhere") {
		t.Fatalf("SetAttributes after a redirect: %v; want an error naming the 302 and its target", err)
	}
	if posts.Load() != 1 || gets.Load() != 0 {
		t.Fatalf("%d POSTs, %d GETs of the redirect target; want 1 and 0", posts.Load(), gets.Load())
	}
}

// TestSetAttributesKnownSkipsTheListing: with the rows read along with the
// collection, a create's attributes cost a POST each, an update's a PUT
// each, an unchanged value nothing; a row gone since is listed and the
// write done all the same.
func TestSetAttributesKnownSkipsTheListing(t *testing.T) {
	sim, url := startSim(t, threatqsim.Options{})
	c := newClient(t, url, nil)
	ctx := t.Context()
	rowsOf := func(id int64) []threatq.AttributeRow {
		var out []threatq.AttributeRow
		for _, a := range sim.Attributes(id) {
			out = append(out, threatq.AttributeRow{ID: a.ID, Name: a.Name, Value: a.Value})
		}
		return out
	}
	created := []threatq.Attribute{{Name: "ID", Value: "325"}, {Name: "Threat Level", Value: "Malicious"}, {Name: "Threat Source", Value: "ThreatQ"}}

	id := oneIndicator(t, sim)
	sim.ResetCounts()
	if err := c.SetAttributesKnown(ctx, id, created, []threatq.AttributeRow{}); err != nil {
		t.Fatal(err)
	}
	if n := sim.Counts(); n.AttributeLists != 0 || n.AttributeAdds != 1 || n.Requests-n.TokenRequests != 1 {
		t.Fatalf("create: %+v; want one POST (an array of three) and no list", n)
	}
	if got := sim.Attributes(id); len(got) != 3 {
		t.Fatalf("create: attributes %+v", got)
	}
	sim.ResetCounts()
	updated := []threatq.Attribute{{Name: "Threat Level", Value: "Benign"}, {Name: "Threat Source", Value: "SOC feed"}}
	if err := c.SetAttributesKnown(ctx, id, updated, rowsOf(id)); err != nil {
		t.Fatal(err)
	}
	if n := sim.Counts(); n.AttributeLists != 0 || n.AttributeChanges != 2 || n.Requests-n.TokenRequests != 2 {
		t.Fatalf("update: %+v; want two PUTs and no list", n)
	}
	sim.ResetCounts()
	if err := c.SetAttributesKnown(ctx, id, updated, rowsOf(id)); err != nil {
		t.Fatal(err)
	}
	if n := sim.Counts(); n.Requests-n.TokenRequests != 0 {
		t.Fatalf("unchanged: %+v; want no request", n)
	}

	// A row read earlier is gone: the write lists and goes through.
	stale := rowsOf(id)
	for i := range stale {
		stale[i].ID += 1000
	}
	sim.ResetCounts()
	if err := c.SetAttributesKnown(ctx, id, []threatq.Attribute{{Name: "Threat Level", Value: "Suspicious"}}, stale); err != nil {
		t.Fatal(err)
	}
	got := map[string][]string{}
	for _, a := range sim.Attributes(id) {
		got[a.Name] = append(got[a.Name], a.Value)
	}
	if len(got["Threat Level"]) != 1 || got["Threat Level"][0] != "Suspicious" || sim.Counts().AttributeLists != 1 {
		t.Fatalf("after a stale row: %v, counts %+v", got, sim.Counts())
	}
}
