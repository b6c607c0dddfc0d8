// Package threatqsim is an in-memory ThreatQ for tests, the demo and the
// sim command: the token endpoint (client-credentials, password and
// refresh grants), data collections paged with cursorMark in the shape of
// the public fixtures, a collection's name (by hash, and in the listing of
// saved searches), and the attribute calls of
// indicators (list, add, change, remove). It is an http.Handler; serve it
// with httptest or a real listener.
//
// It models what tqtriage depends on and what public sources show, no
// more: it rejects a lowercase "bearer" like the real server, answers the
// last page with "data": {}, and gives type, status and indicator ids that
// differ per instance, so that tests cannot come to depend on them. Knobs
// (latency, token lifetime, a share of 5xx, an outage, forced failures, the
// largest page) are set in Options and can be changed at run time, as can
// the credentials it accepts, a client's API access (RefuseAPI) and a
// window of 429s (ThrottleFor); request
// counters and attribute snapshots let tests check what a client did.
//
// It does not import the client package: it is written from the fixtures,
// so that the client's tests test the client against ThreatQ's shapes
// rather than against itself.
package threatqsim

import (
	"crypto/md5"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Options configure a Server. The zero value is usable: every field has
// the default noted on it.
type Options struct {
	// ClientID and ClientSecret are accepted by the client-credentials
	// grant (default "tqtriage-sim" / "tqtriage-sim-secret").
	ClientID, ClientSecret string
	// Email and Password are accepted by the password grant, together with
	// ClientID (default "analyst@example.com" / "sim-password").
	Email, Password string
	// TokenLifetime is how long an access token works (default 48h, as
	// ThreatQ's 172799 s). expires_in says it in whole seconds, at least 1.
	TokenLifetime time.Duration
	// TokenType is the token_type of token answers (default "Bearer").
	// Some servers answer "bearer"; API calls still need "Bearer".
	TokenType string
	// Latency is added to every request.
	Latency time.Duration
	// ErrorRate is the share (0 to 1) of API requests, the token endpoint
	// excepted, answered with 500, 502 or 503.
	ErrorRate float64
	// MaxPageSize caps the limit of a collection page (default 1000); the
	// answer's "limit" says what was applied.
	MaxPageSize int
	// RetryAfter, when positive, is sent as Retry-After (whole seconds, at
	// least 1) with 429 and 503 answers.
	RetryAfter time.Duration
	// Seed makes ids and injected failures repeatable (0: a random seed).
	Seed uint64
	// NoSearchByHash turns GET /api/search/query/{hash} off (404, as an
	// unknown route): no public source shows that call, so a client must
	// also do with the listing of saved searches, which ThreatQuotient's
	// SDK uses.
	NoSearchByHash bool
	// NoAttributeArrays makes POST /api/indicators/{id}/attributes refuse
	// an array of attributes as a form validator would (422, "The name
	// field is required."): docs/api.md assumes ThreatQ takes one, but every
	// known integration sends one object a request.
	NoAttributeArrays bool
}

// Defaults of Options.
const (
	DefaultClientID      = "tqtriage-sim"
	DefaultClientSecret  = "tqtriage-sim-secret"
	DefaultEmail         = "analyst@example.com"
	DefaultPassword      = "sim-password"
	DefaultTokenLifetime = 48 * time.Hour
	DefaultMaxPageSize   = 1000
	defaultPageSize      = 100
)

// tsLayout is ThreatQ's timestamp format ("2021-10-01 18:36:03").
const tsLayout = "2006-01-02 15:04:05"

// epoch is when the simulated instance's indicators were created: seeded
// indicators get increasing timestamps from here, so that sorting by
// updated_at and by id agree.
var epoch = time.Date(2021, 10, 1, 18, 36, 3, 0, time.UTC)

// SeedIndicator is an indicator to put into a collection.
type SeedIndicator struct {
	Type  string // type name, such as "SHA-256"; unknown names get a new type
	Value string
	// Status is the status name (default "Active").
	Status string
	Score  int
	// Source names who reported it (default "tqtriage-sim seed").
	Source string
	// Attributes it already has.
	Attributes []SeedAttribute
}

// SeedAttribute is an attribute an indicator starts with.
type SeedAttribute struct {
	Name, Value string
	Source      string // default "tqtriage-sim seed"
}

// Attribute is one attribute row of an indicator, as tests read it back.
type Attribute struct {
	ID      int64 // the row id (the one PUT and DELETE name)
	Name    string
	Value   string
	Sources []string // names of the sources that set or changed it
}

// Counts are request counters. Every request counts in Requests; the
// others count requests that reached their handler (after latency, outage
// and injected failures) whatever their answer.
type Counts struct {
	Requests         int64
	TokenRequests    int64
	TokensIssued     int64
	Unauthorized     int64 // API calls answered 401 (missing, lowercase, unknown or expired token)
	InjectedFailures int64 // 5xx/429 answered by ErrorRate, FailNext, SetDown or ThrottleFor, and 200s with errors (ErrorsInOKNext)
	CollectionPages  int64
	CollectionNames  int64 // GET /api/search/query/{hash} answered
	SearchLists      int64 // GET /api/search/query (saved searches listed)
	IndicatorGets    int64
	AttributeLists   int64
	AttributeAdds    int64 // POST requests (one may add several rows)
	AttributeChanges int64 // PUT
	AttributeDeletes int64 // DELETE
}

type counters struct {
	requests, tokenRequests, tokensIssued, unauthorized, injected atomic.Int64
	pages, names, searchLists, indicatorGets                      atomic.Int64
	attrLists, attrAdds, attrChanges, attrDeletes                 atomic.Int64
}

// Server is a simulated ThreatQ. Its methods are safe for concurrent use,
// also while it serves requests.
type Server struct {
	creds Options // credentials and token type (under mu: SetCredentials)
	mux   *http.ServeMux
	n     counters

	refusals refusals // RefuseAPI, ThrottleFor (refusals.go)

	mu sync.Mutex
	// knobs
	latency       time.Duration
	tokenLifetime time.Duration
	errorRate     float64
	down          bool
	maxPage       int
	retryAfter    time.Duration
	noSearchHash  bool
	failNext      []int
	okErrors      []okError
	failing       map[int64]int // indicator id → the status its calls are answered with
	rng           *mrand.Rand

	tokens  map[string]session // access token → who and until when
	refresh map[string]string  // refresh token → subject

	types       map[string]typeInfo
	nextTypeID  int64
	statuses    map[string]statusInfo
	sources     map[string]int64
	nextSource  int64
	attrTypes   map[string]attrType
	nextAttrTyp int64

	indicators  map[int64]*indicator
	byKey       map[string]int64 // type + "\x00" + value → id (seeded only)
	generated   []*genRange
	firstID     int64
	nextID      int64
	collections map[string]*collection
	nextCollID  int64

	attrs     map[int64][]*attrRow // indicator id → rows, in row-id order
	writes    map[int64]int64      // indicator id → attribute writes (POST, PUT, DELETE) that reached it
	rowOwner  map[int64]int64      // row id → indicator id
	nextRowID int64
}

type session struct {
	subject string // client id or email: the source of attributes added without one
	expires time.Time
}

type typeInfo struct {
	id    int64
	name  string
	class string
}

type statusInfo struct {
	id          int64
	name        string
	description string
}

type attrType struct {
	id      int64
	created time.Time
}

type indicator struct {
	id     int64
	typ    string
	value  string
	status string
	score  int
	source string
}

// genRange is a generated collection's indicators: ids first..first+n-1,
// type and value computed on demand, so that a large collection costs no
// memory per indicator.
type genRange struct {
	first int64
	n     int
	gen   func(i int) (typ, value string)
}

type collection struct {
	id   int64
	hash string
	name string
	ids  []int64 // ascending; nil for a generated collection
	gen  *genRange
}

type attrRow struct {
	id          int64
	attributeID int64
	indicatorID int64
	name        string
	value       string
	sources     []string
	created     time.Time
	updated     time.Time
}

// knownTypes are ThreatQ's indicator types with their class; each instance
// numbers them differently.
var knownTypes = []struct{ name, class string }{
	{"ASN", "network"}, {"Binary String", "host"}, {"CIDR Block", "network"}, {"CVE", "host"},
	{"Email Address", "network"}, {"Email Attachment", "host"}, {"Email Subject", "network"},
	{"File Path", "host"}, {"Filename", "host"}, {"FQDN", "network"}, {"Fuzzy Hash", "host"},
	{"GOST Hash", "host"}, {"IP Address", "network"}, {"IPv6 Address", "network"},
	{"MAC Address", "host"}, {"MD5", "host"}, {"Mutex", "host"}, {"Password", "host"},
	{"Registry Key", "host"}, {"SHA-1", "host"}, {"SHA-256", "host"}, {"SHA-384", "host"},
	{"SHA-512", "host"}, {"String", "host"}, {"URL", "network"}, {"URL Path", "network"},
	{"User-agent", "network"}, {"Username", "host"}, {"X-Mailer", "network"},
	{"x509 Serial", "host"}, {"x509 Subject", "host"},
}

var knownStatuses = []struct{ name, description string }{
	{"Active", "Poses a threat and is being exported to detection tools."},
	{"Expired", "No longer poses a serious threat."},
	{"Indirect", "Associated to an active indicator or event (i.e. pDNS)."},
	{"Review", "Requires further analysis."},
	{"Whitelisted", "Poses NO risk and should never be deployed."},
}

// New returns a simulator configured by opts.
func New(opts Options) *Server {
	if opts.ClientID == "" {
		opts.ClientID = DefaultClientID
	}
	if opts.ClientSecret == "" {
		opts.ClientSecret = DefaultClientSecret
	}
	if opts.Email == "" {
		opts.Email = DefaultEmail
	}
	if opts.Password == "" {
		opts.Password = DefaultPassword
	}
	if opts.TokenLifetime <= 0 {
		opts.TokenLifetime = DefaultTokenLifetime
	}
	if opts.TokenType == "" {
		opts.TokenType = "Bearer"
	}
	if opts.MaxPageSize <= 0 {
		opts.MaxPageSize = DefaultMaxPageSize
	}
	seed := opts.Seed
	if seed == 0 {
		seed = mrand.Uint64()
	}
	rng := mrand.New(mrand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	s := &Server{
		creds:         opts,
		latency:       opts.Latency,
		tokenLifetime: opts.TokenLifetime,
		errorRate:     opts.ErrorRate,
		maxPage:       opts.MaxPageSize,
		retryAfter:    opts.RetryAfter,
		noSearchHash:  opts.NoSearchByHash,
		rng:           rng,
		tokens:        map[string]session{},
		refresh:       map[string]string{},
		types:         map[string]typeInfo{},
		statuses:      map[string]statusInfo{},
		sources:       map[string]int64{},
		attrTypes:     map[string]attrType{},
		indicators:    map[int64]*indicator{},
		byKey:         map[string]int64{},
		collections:   map[string]*collection{},
		attrs:         map[int64][]*attrRow{},
		writes:        map[int64]int64{},
		failing:       map[int64]int{},
		rowOwner:      map[int64]int64{},
	}
	// Per-instance numbering: shuffled and offset, as ids differ between
	// real instances.
	typeBase := int64(rng.IntN(40) + 1)
	for i, p := range rng.Perm(len(knownTypes)) {
		t := knownTypes[p]
		s.types[t.name] = typeInfo{id: typeBase + int64(i), name: t.name, class: t.class}
	}
	s.nextTypeID = typeBase + int64(len(knownTypes))
	for i, p := range rng.Perm(len(knownStatuses)) {
		st := knownStatuses[p]
		s.statuses[st.name] = statusInfo{id: int64(i + 1), name: st.name, description: st.description}
	}
	s.nextSource = int64(rng.IntN(50) + 2)
	s.nextAttrTyp = int64(rng.IntN(30) + 1)
	s.firstID = int64(1000 + rng.IntN(900000))
	s.nextID = s.firstID
	s.nextRowID = int64(1_000_000 + rng.IntN(4_000_000))
	s.nextCollID = int64(rng.IntN(100) + 1)
	s.routes()
	return s
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.n.requests.Add(1)
	s.mux.ServeHTTP(w, r)
}

// --- seeding ---------------------------------------------------------------

// AddCollection stores a data collection of the given indicators and
// returns their ids, in order. An indicator whose type and value were
// seeded before (by AddCollection) is the same indicator, with the same id
// (its seed attributes are added to the ones it has). Adding a hash again
// replaces that collection.
func (s *Server) AddCollection(hash, name string, indicators []SeedIndicator) []int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]int64, len(indicators))
	for i, seed := range indicators {
		ids[i] = s.addIndicatorLocked(seed)
	}
	sorted := append([]int64(nil), ids...)
	sort.Slice(sorted, func(a, b int) bool { return sorted[a] < sorted[b] })
	// The same indicator twice is one member.
	uniq := sorted[:0]
	for i, id := range sorted {
		if i == 0 || id != sorted[i-1] {
			uniq = append(uniq, id)
		}
	}
	s.putCollectionLocked(&collection{hash: hash, name: name, ids: uniq})
	return ids
}

// AddGeneratedCollection stores a collection of n indicators whose type
// and value gen computes from their index (0 to n-1) whenever they are
// served, so that it costs no memory per indicator. gen must be a pure
// function, safe for concurrent use. The i-th indicator's id is first+i.
// Generated indicators are not matched against seeded ones by value.
func (s *Server) AddGeneratedCollection(hash, name string, n int, gen func(i int) (typ, value string)) (first int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := &genRange{first: s.nextID, n: n, gen: gen}
	s.nextID += int64(n)
	s.generated = append(s.generated, g)
	for i := 0; i < min(n, 1000); i++ {
		// Give the types an id now; a type first seen later gets one then.
		t, _ := gen(i)
		s.typeLocked(t)
	}
	s.putCollectionLocked(&collection{hash: hash, name: name, gen: g})
	return g.first
}

func (s *Server) putCollectionLocked(c *collection) {
	if old, ok := s.collections[c.hash]; ok {
		c.id = old.id
	} else {
		c.id = s.nextCollID
		s.nextCollID++
	}
	s.collections[c.hash] = c
}

func (s *Server) addIndicatorLocked(seed SeedIndicator) int64 {
	key := seed.Type + "\x00" + seed.Value
	id, ok := s.byKey[key]
	if !ok {
		id = s.nextID
		s.nextID++
		status := seed.Status
		if status == "" {
			status = "Active"
		}
		if _, ok := s.statuses[status]; !ok {
			s.statuses[status] = statusInfo{id: int64(len(s.statuses) + 1), name: status}
		}
		src := seed.Source
		if src == "" {
			src = "tqtriage-sim seed"
		}
		s.sourceLocked(src)
		s.typeLocked(seed.Type)
		s.indicators[id] = &indicator{id: id, typ: seed.Type, value: seed.Value, status: status, score: seed.Score, source: src}
		s.byKey[key] = id
	}
	for _, a := range seed.Attributes {
		src := a.Source
		if src == "" {
			src = "tqtriage-sim seed"
		}
		s.addRowLocked(id, a.Name, a.Value, []string{src}, s.created(id))
	}
	return id
}

// AddAttribute adds one attribute row to an indicator, even when a row of
// that name exists (to set up duplicates), and returns the row id.
func (s *Server) AddAttribute(indicatorID int64, name, value, source string) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.indicatorLocked(indicatorID); !ok {
		return 0, fmt.Errorf("threatqsim: no indicator %d", indicatorID)
	}
	if source == "" {
		source = "tqtriage-sim seed"
	}
	return s.addRowLocked(indicatorID, name, value, []string{source}, time.Now().UTC()).id, nil
}

func (s *Server) addRowLocked(indicatorID int64, name, value string, sources []string, at time.Time) *attrRow {
	at = at.Truncate(time.Second)
	row := &attrRow{
		id:          s.nextRowID,
		attributeID: s.attrTypeLocked(name, at).id,
		indicatorID: indicatorID,
		name:        name,
		value:       value,
		sources:     sources,
		created:     at,
		updated:     at,
	}
	s.nextRowID++
	for _, src := range sources {
		s.sourceLocked(src)
	}
	s.attrs[indicatorID] = append(s.attrs[indicatorID], row)
	s.rowOwner[row.id] = indicatorID
	return row
}

func (s *Server) typeLocked(name string) typeInfo {
	t, ok := s.types[name]
	if !ok {
		t = typeInfo{id: s.nextTypeID, name: name, class: "host"}
		s.nextTypeID++
		s.types[name] = t
	}
	return t
}

func (s *Server) sourceLocked(name string) int64 {
	id, ok := s.sources[name]
	if !ok {
		id = s.nextSource
		s.nextSource++
		s.sources[name] = id
	}
	return id
}

func (s *Server) attrTypeLocked(name string, at time.Time) attrType {
	t, ok := s.attrTypes[name]
	if !ok {
		t = attrType{id: s.nextAttrTyp, created: at}
		s.nextAttrTyp++
		s.attrTypes[name] = t
	}
	return t
}

// indicatorLocked finds a seeded or generated indicator.
func (s *Server) indicatorLocked(id int64) (*indicator, bool) {
	if in, ok := s.indicators[id]; ok {
		return in, true
	}
	for _, g := range s.generated {
		if id >= g.first && id < g.first+int64(g.n) {
			typ, value := g.gen(int(id - g.first))
			return &indicator{id: id, typ: typ, value: value, status: "Active", source: "tqtriage-sim seed"}, true
		}
	}
	return nil, false
}

// created is an indicator's creation time: increasing with its id.
func (s *Server) created(id int64) time.Time {
	return epoch.Add(time.Duration(id-s.firstID) * time.Second)
}

// --- reading back ----------------------------------------------------------

// Lookup returns the id of a seeded indicator by type name and value.
func (s *Server) Lookup(typ, value string) (int64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id, ok := s.byKey[typ+"\x00"+value]
	return id, ok
}

// TypeID returns this instance's id of an indicator type name.
func (s *Server) TypeID(name string) (int64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.types[name]
	return t.id, ok
}

// Attributes returns a copy of an indicator's attribute rows, in row order.
func (s *Server) Attributes(indicatorID int64) []Attribute {
	s.mu.Lock()
	defer s.mu.Unlock()
	return copyRows(s.attrs[indicatorID])
}

// AllAttributes returns a snapshot of the attributes of every indicator
// that has any.
func (s *Server) AllAttributes() map[int64][]Attribute {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[int64][]Attribute, len(s.attrs))
	for id, rows := range s.attrs {
		if len(rows) > 0 {
			out[id] = copyRows(rows)
		}
	}
	return out
}

func copyRows(rows []*attrRow) []Attribute {
	if len(rows) == 0 {
		return nil
	}
	out := make([]Attribute, len(rows))
	for i, r := range rows {
		out[i] = Attribute{ID: r.id, Name: r.name, Value: r.value, Sources: append([]string(nil), r.sources...)}
	}
	return out
}

// Writes returns how many attribute writes (POST, PUT and DELETE
// requests, whatever their answer) reached an indicator: what tests count
// to see that one result was written once.
func (s *Server) Writes(indicatorID int64) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.writes[indicatorID]
}

// Counts returns the request counters.
func (s *Server) Counts() Counts {
	return Counts{
		Requests:         s.n.requests.Load(),
		TokenRequests:    s.n.tokenRequests.Load(),
		TokensIssued:     s.n.tokensIssued.Load(),
		Unauthorized:     s.n.unauthorized.Load(),
		InjectedFailures: s.n.injected.Load(),
		CollectionPages:  s.n.pages.Load(),
		CollectionNames:  s.n.names.Load(),
		SearchLists:      s.n.searchLists.Load(),
		IndicatorGets:    s.n.indicatorGets.Load(),
		AttributeLists:   s.n.attrLists.Load(),
		AttributeAdds:    s.n.attrAdds.Load(),
		AttributeChanges: s.n.attrChanges.Load(),
		AttributeDeletes: s.n.attrDeletes.Load(),
	}
}

// ResetCounts sets every counter to zero, the writes of each indicator
// too.
func (s *Server) ResetCounts() {
	s.mu.Lock()
	clear(s.writes)
	s.mu.Unlock()
	for _, c := range []*atomic.Int64{
		&s.n.requests, &s.n.tokenRequests, &s.n.tokensIssued, &s.n.unauthorized, &s.n.injected,
		&s.n.pages, &s.n.names, &s.n.searchLists, &s.n.indicatorGets,
		&s.n.attrLists, &s.n.attrAdds, &s.n.attrChanges, &s.n.attrDeletes,
	} {
		c.Store(0)
	}
}

// --- runtime knobs ---------------------------------------------------------

// SetLatency sets the delay added to every request.
func (s *Server) SetLatency(d time.Duration) { s.mu.Lock(); s.latency = d; s.mu.Unlock() }

// SetTokenLifetime sets the lifetime of tokens issued from now on.
func (s *Server) SetTokenLifetime(d time.Duration) {
	s.mu.Lock()
	if d > 0 {
		s.tokenLifetime = d
	}
	s.mu.Unlock()
}

// SetErrorRate sets the share of API requests answered with a 5xx.
func (s *Server) SetErrorRate(f float64) { s.mu.Lock(); s.errorRate = f; s.mu.Unlock() }

// SetDown starts (true) or ends (false) an outage: while down, every
// request, the token endpoint's included, is answered 503.
func (s *Server) SetDown(down bool) { s.mu.Lock(); s.down = down; s.mu.Unlock() }

// SetMaxPageSize sets the cap on a collection page's limit.
func (s *Server) SetMaxPageSize(n int) {
	s.mu.Lock()
	if n > 0 {
		s.maxPage = n
	}
	s.mu.Unlock()
}

// SetSearchByHash turns GET /api/search/query/{hash} on or off (see
// Options.NoSearchByHash).
func (s *Server) SetSearchByHash(on bool) { s.mu.Lock(); s.noSearchHash = !on; s.mu.Unlock() }

// SetRetryAfter sets the Retry-After sent with 429 and 503 (0: none).
func (s *Server) SetRetryAfter(d time.Duration) { s.mu.Lock(); s.retryAfter = d; s.mu.Unlock() }

// FailNext answers the next n API requests (the token endpoint excepted)
// with status, such as 503 or 429, before any other check.
func (s *Server) FailNext(n int, status int) {
	s.mu.Lock()
	for range n {
		s.failNext = append(s.failNext, status)
	}
	s.mu.Unlock()
}

// FailIndicator answers every API request about one indicator (GET of
// it, and its attribute calls) with status, such as 503 (with the
// Retry-After of SetRetryAfter), until it is called again with 0: a
// ThreatQ that keeps failing for one indicator only.
func (s *Server) FailIndicator(id int64, status int) {
	s.mu.Lock()
	if status == 0 {
		delete(s.failing, id)
	} else {
		s.failing[id] = status
	}
	s.mu.Unlock()
}

// okError is one answer of ErrorsInOKNext.
type okError struct {
	status int
	msg    string
}

// ErrorsInOKNext answers the next n API requests (the token endpoint
// excepted) with 200 and a body that carries errors, doing nothing else,
// as a ThreatQ may: {"errors":["msg"]}, or with status (not 0)
// {"errors":[{"status":"<status>","title":"msg"}]}. They come after the
// failures of FailNext.
func (s *Server) ErrorsInOKNext(n, status int, msg string) {
	s.mu.Lock()
	for range n {
		s.okErrors = append(s.okErrors, okError{status, msg})
	}
	s.mu.Unlock()
}

// ExpireTokens revokes every access token issued so far: the next API
// call with one is answered 401.
func (s *Server) ExpireTokens() {
	s.mu.Lock()
	clear(s.tokens)
	s.mu.Unlock()
}

// --- small helpers ---------------------------------------------------------

func newSecret() string {
	var b [20]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func ts(t time.Time) string { return t.UTC().Format(tsLayout) }

func md5hex(s string) string {
	sum := md5.Sum([]byte(s))
	return hex.EncodeToString(sum[:])
}
