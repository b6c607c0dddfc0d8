// Package triagesim is an in-memory Cofense Triage (public API v2, threat
// indicators only) for tests, benchmarks, the demo and the sim command. It
// answers the way the real service does as far as public sources show it
// (the fixtures in triage/testdata/fixtures among them): Doorkeeper's
// token endpoint and 401s, jsonapi-resources documents, errors, paging and
// media-type checks. It is strict where the real service is, so that a
// client that passes against it sends what Triage accepts.
//
// Behaviour that no source confirms, chosen here and worth knowing:
//   - A bearer scheme other than exactly "Bearer " (for instance "bearer ")
//     is refused with 401, as ThreatQ does; Doorkeeper itself may be laxer.
//   - A PUT or PATCH naming an attribute other than threat_level and
//     threat_source is refused with 400 "Param not allowed" (what
//     jsonapi-resources does for a field outside updatable_fields).
//   - page[size] outside 1..200 or page[number] below 1 is 400
//     "Invalid page value" (jsonapi-resources' paginator), never clamped.
//   - Query parameters other than filter[…], page[number], page[size], sort
//     and fields[threat_indicators] are 400 "Param not allowed".
//   - threat_source is optional on create; level, type and value are
//     required. A duplicate type+value is reported only when the rest is
//     valid.
//   - GET /api/public/v2/system/status needs a token and answers a small
//     invented document.
//
// Knobs (latency, token lifetime, rate limit, failures) are in Options and
// can be changed while it serves; so can the credentials it accepts
// (SetCredentials), and a client's API access can be withdrawn (RefuseAPI)
// or throttled for a window (ThrottleFor). Stats counts what it received.
package triagesim

import (
	"errors"
	"io"
	"math/rand/v2"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const apiPrefix = "/api/public/v2"

// MediaType is JSON:API's media type.
const MediaType = "application/vnd.api+json"

// Server is the simulator: an http.Handler, safe for concurrent use.
type Server struct {
	mu         sync.Mutex // serialises changes of settings and FailNext
	settings   atomic.Pointer[settings]
	failNext   atomic.Int64
	failStatus atomic.Int64

	store  *store
	tokens *tokens
	stats  counters
	now    func() time.Time

	refusals refusals // RefuseAPI, ThrottleFor (refusals.go)
}

// New returns a simulator configured by opts, holding no indicators.
func New(opts Options) *Server {
	s := &Server{store: newStore(), tokens: newTokens(), now: time.Now}
	s.settings.Store(newSettings(opts))
	return s
}

// Seed stores indicators as if created earlier, with ids assigned in order
// and each one's CreatedAt/UpdatedAt kept when set (else now). It returns
// them as stored. An invalid or duplicate one stops the seeding with an
// error; those before it stay.
func (s *Server) Seed(in ...Indicator) ([]Indicator, error) {
	out := make([]Indicator, 0, len(in))
	now := s.now().UTC()
	for _, ind := range in {
		got, errs := s.store.create(ind, now, s.settings.Load().Uniqueness)
		if len(errs) > 0 {
			return out, errors.New("triagesim: seed " + ind.ThreatType + " " + strconv.Quote(ind.ThreatValue) +
				": " + errs[0].attr + " - " + errs[0].msg)
		}
		out = append(out, got)
	}
	return out, nil
}

// Indicators returns a copy of every indicator, in id order.
func (s *Server) Indicators() []Indicator { return s.store.all() }

// Len is the number of indicators held.
func (s *Server) Len() int { return s.store.len() }

// Find returns the first indicator of type and value, whatever its
// source, if there is one.
func (s *Server) Find(threatType, value string) (Indicator, bool) {
	return s.store.find(threatType, value, "*")
}

// FindFrom returns the indicator of type and value whose source is source,
// if there is one.
func (s *Server) FindFrom(threatType, value, source string) (Indicator, bool) {
	return s.store.find(threatType, value, source)
}

// Get returns the indicator of id, if there is one.
func (s *Server) Get(id string) (Indicator, bool) {
	n, err := strconv.ParseInt(id, 10, 64)
	if err != nil {
		return Indicator{}, false
	}
	return s.store.get(n)
}

// ExpireTokens makes every token granted so far expired: its next use gets
// 401 "The access token expired", as after its lifetime.
func (s *Server) ExpireTokens() { s.tokens.expireAll(s.now()) }

// RevokeTokens revokes every token granted so far (401 "The access token
// was revoked").
func (s *Server) RevokeTokens() { s.tokens.revokeAll() }

// route is what a request asks for; it names the Stats.Requests entries.
type route int

const (
	routeOther route = iota
	routeToken
	routeCreate
	routeList
	routeGet
	routePut
	routePatch
	routeStatus
	numRoutes
)

// Endpoint names, the keys of Stats.Requests.
const (
	EndpointToken  = "POST /oauth/token"
	EndpointCreate = "POST /threat_indicators"
	EndpointList   = "GET /threat_indicators"
	EndpointGet    = "GET /threat_indicators/{id}"
	EndpointPut    = "PUT /threat_indicators/{id}"
	EndpointPatch  = "PATCH /threat_indicators/{id}"
	EndpointStatus = "GET /system/status"
	EndpointOther  = "other" // unknown paths and methods (answered 404)
)

var routeNames = [numRoutes]string{
	routeOther: EndpointOther, routeToken: EndpointToken, routeCreate: EndpointCreate,
	routeList: EndpointList, routeGet: EndpointGet, routePut: EndpointPut, routePatch: EndpointPatch,
	routeStatus: EndpointStatus,
}

// classify maps a request to its route and, for one indicator, its id text.
func classify(r *http.Request) (route, string) {
	p := r.URL.Path
	if len(p) > 1 {
		p = strings.TrimSuffix(p, "/") // Rails ignores a trailing slash
	}
	if p == "/oauth/token" {
		if r.Method == http.MethodPost {
			return routeToken, ""
		}
		return routeOther, ""
	}
	rest, ok := strings.CutPrefix(p, apiPrefix)
	if !ok {
		return routeOther, ""
	}
	switch rest {
	case "/threat_indicators":
		switch r.Method {
		case http.MethodPost:
			return routeCreate, ""
		case http.MethodGet:
			return routeList, ""
		}
		return routeOther, ""
	case "/system/status":
		if r.Method == http.MethodGet {
			return routeStatus, ""
		}
		return routeOther, ""
	}
	id, ok := strings.CutPrefix(rest, "/threat_indicators/")
	if !ok || id == "" || strings.Contains(id, "/") {
		return routeOther, ""
	}
	switch r.Method {
	case http.MethodGet:
		return routeGet, id
	case http.MethodPut:
		return routePut, id
	case http.MethodPatch:
		return routePatch, id
	}
	return routeOther, ""
}

// ServeHTTP answers one request. The order of checks is the order in which
// the layers of the real service would see it: latency, routing, the rate
// limiter and failures (in front of the app), the bearer token (Doorkeeper,
// a before_action), the media types (jsonapi-resources), the action.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	st := s.settings.Load()
	rt, id := classify(r)
	s.stats.requests[rt].Add(1)

	if d := st.latency(); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
	}

	switch rt {
	case routeOther:
		s.stats.notFound.Add(1)
		s.writeErrors(w, http.StatusNotFound, newError(http.StatusNotFound, "404", "Route not found",
			"No route matches ["+r.Method+"] "+strconv.Quote(r.URL.Path)))
		return
	case routeToken:
		s.serveToken(w, r, st)
		return
	}

	if s.throttled(w) {
		return
	}
	if st.limiter != nil && !st.limiter.Allow() {
		s.stats.rateLimited.Add(1)
		w.Header().Set("Retry-After", st.retryAfter)
		s.writeErrors(w, http.StatusTooManyRequests, newError(http.StatusTooManyRequests, "429",
			"Too many requests", "Rate limit exceeded. Retry later."))
		return
	}
	if status, ok := s.takeForcedFailure(); ok || (st.FailureRate > 0 && rand.Float64() < st.FailureRate) {
		if !ok || status == 0 {
			status = st.FailureStatus
		}
		switch {
		case status == http.StatusTooManyRequests:
			s.stats.rateLimited.Add(1)
		case status >= 500:
			s.stats.serverErrors.Add(1)
		}
		s.writeErrors(w, status, newError(status, strconv.Itoa(status), http.StatusText(status), "Simulated failure."))
		return
	}
	if !s.authorized(w, r) || s.refused(w) {
		return
	}
	if !s.acceptable(w, r) {
		return
	}

	switch rt {
	case routeCreate:
		s.serveCreate(w, r, st)
	case routeList:
		s.serveList(w, r, st)
	case routeGet:
		s.serveGet(w, r, st, id)
	case routePut, routePatch:
		s.serveUpdate(w, r, st, id)
	case routeStatus:
		writeJSON(w, http.StatusOK, MediaType, map[string]any{"data": map[string]any{
			"id": "1", "type": "system_status", "attributes": map[string]string{"status": "ok"},
		}})
	}
}

func (st *settings) latency() time.Duration {
	d := st.Latency
	if st.LatencyJitter > 0 {
		d += rand.N(st.LatencyJitter)
	}
	return d
}

// serveToken is Doorkeeper's client credentials grant. Credentials are
// accepted in the form body (or query) or as HTTP Basic, as Doorkeeper
// accepts them.
func (s *Server) serveToken(w http.ResponseWriter, r *http.Request, st *settings) {
	r.Body = http.MaxBytesReader(w, r.Body, st.MaxBodyBytes)
	if err := r.ParseForm(); err != nil {
		s.refuseGrant(w, http.StatusBadRequest, "invalid_request",
			"The request is missing a required parameter, includes an unsupported parameter value, or is otherwise malformed.")
		return
	}
	id, secret, basic := r.BasicAuth()
	if !basic {
		id, secret = r.Form.Get("client_id"), r.Form.Get("client_secret")
	}
	switch grant := r.Form.Get("grant_type"); {
	case grant == "":
		s.refuseGrant(w, http.StatusBadRequest, "invalid_request",
			"The request is missing a required parameter, includes an unsupported parameter value, or is otherwise malformed.")
	case grant != "client_credentials":
		s.refuseGrant(w, http.StatusBadRequest, "unsupported_grant_type",
			"The authorization grant type is not supported by the authorization server.")
	case id != st.ClientID || secret != st.ClientSecret:
		w.Header().Set("WWW-Authenticate", `Bearer realm="Doorkeeper", error="invalid_client", error_description="Client authentication failed due to unknown client, no client authentication included, or unsupported authentication method."`)
		s.refuseGrant(w, http.StatusUnauthorized, "invalid_client",
			"Client authentication failed due to unknown client, no client authentication included, or unsupported authentication method.")
	default:
		now := s.now()
		tok := s.tokens.grant(now, st.TokenLifetime)
		s.stats.tokenGrants.Add(1)
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Pragma", "no-cache")
		writeJSON(w, http.StatusOK, "application/json; charset=utf-8", tokenResponse{
			AccessToken: tok, TokenType: "Bearer",
			ExpiresIn: max(1, int64((st.TokenLifetime+time.Second-1)/time.Second)),
			CreatedAt: now.Unix(),
		})
	}
}

func (s *Server) refuseGrant(w http.ResponseWriter, status int, code, desc string) {
	s.stats.tokenRefusals.Add(1)
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, status, "application/json; charset=utf-8", oauthError{Error: code, ErrorDescription: desc})
}

// authorized checks the bearer token; a refusal is Doorkeeper's: 401, an
// empty body, the reason in WWW-Authenticate.
func (s *Server) authorized(w http.ResponseWriter, r *http.Request) bool {
	why := tokenUnknown
	if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		why = s.tokens.check(tok, s.now())
	}
	if why == "" {
		return true
	}
	s.stats.unauthorized.Add(1)
	w.Header().Set("WWW-Authenticate", `Bearer realm="Doorkeeper", error="invalid_token", error_description="`+why+`"`)
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusUnauthorized)
	return false
}

// acceptable applies JSON:API's Accept rule: absent, or naming the media
// type (without parameters) or a wildcard that covers it; else 406.
func (s *Server) acceptable(w http.ResponseWriter, r *http.Request) bool {
	accept := r.Header.Values("Accept")
	if len(accept) == 0 {
		return true
	}
	for _, h := range accept {
		for part := range strings.SplitSeq(h, ",") {
			mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err != nil {
				continue
			}
			delete(params, "q")
			if mt == "*/*" || mt == "application/*" || (mt == MediaType && len(params) == 0) {
				return true
			}
		}
	}
	s.stats.notAcceptable.Add(1)
	s.writeErrors(w, http.StatusNotAcceptable, newError(http.StatusNotAcceptable, "406", "Not acceptable",
		"All requests must use the '"+MediaType+"' Accept without media type parameters. This request specified '"+
			strings.Join(accept, ", ")+"'."))
	return false
}

// readBody checks the Content-Type of a request that carries a document
// (415 unless exactly JSON:API's media type) and reads it within the bound
// (413), answering the error itself when it returns false.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request, st *settings) ([]byte, bool) {
	ct := r.Header.Get("Content-Type")
	if mt, params, err := mime.ParseMediaType(ct); err != nil || mt != MediaType || len(params) > 0 {
		s.stats.unsupportedMediaType.Add(1)
		s.writeErrors(w, http.StatusUnsupportedMediaType, newError(http.StatusUnsupportedMediaType, "415",
			"Unsupported media type", "All requests that create or update must use the '"+MediaType+
				"' Content-Type. This request specified '"+ct+"'."))
		return nil, false
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, st.MaxBodyBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			s.badRequest(w, http.StatusRequestEntityTooLarge, newError(http.StatusRequestEntityTooLarge, "413",
				"Request entity too large", "The request body exceeds "+strconv.FormatInt(st.MaxBodyBytes, 10)+" bytes."))
		}
		return nil, false
	}
	return body, true
}

func (s *Server) serveCreate(w http.ResponseWriter, r *http.Request, st *settings) {
	body, ok := s.readBody(w, r, st)
	if !ok {
		return
	}
	attrs, perr := parseResource(body, "")
	if perr != nil {
		s.badRequest(w, http.StatusBadRequest, *perr)
		return
	}
	in, errs := s.store.create(Indicator{
		ThreatLevel: attrs.level.val, ThreatType: attrs.typ.val, ThreatValue: attrs.value.val, ThreatSource: attrs.source.val,
	}, s.now().UTC(), st.Uniqueness)
	if len(errs) > 0 {
		s.unprocessable(w, errs)
		return
	}
	s.stats.creates.Add(1)
	writeJSON(w, http.StatusCreated, MediaType, document{Data: toResource(st.base(r), in, nil)})
}

func (s *Server) serveUpdate(w http.ResponseWriter, r *http.Request, st *settings, id string) {
	body, ok := s.readBody(w, r, st)
	if !ok {
		return
	}
	attrs, perr := parseResource(body, id)
	if perr == nil {
		perr = attrs.onlyUpdatable()
	}
	if perr != nil {
		s.badRequest(w, http.StatusBadRequest, *perr)
		return
	}
	n, err := strconv.ParseInt(id, 10, 64)
	if err != nil {
		s.recordNotFound(w, id)
		return
	}
	// A null level is a blank one, which validation refuses.
	in, found, errs := s.store.update(n, attrs.level.ptr(), attrs.source.ptr(), s.now().UTC().Truncate(time.Millisecond), st.Uniqueness)
	switch {
	case !found:
		s.recordNotFound(w, id)
	case len(errs) > 0:
		s.unprocessable(w, errs)
	default:
		s.stats.updates.Add(1)
		writeJSON(w, http.StatusOK, MediaType, document{Data: toResource(st.base(r), in, nil)})
	}
}

func (s *Server) serveGet(w http.ResponseWriter, r *http.Request, st *settings, id string) {
	fields, ferr := parseFields(r)
	if ferr != nil {
		s.badRequest(w, http.StatusBadRequest, *ferr)
		return
	}
	n, err := strconv.ParseInt(id, 10, 64)
	if err != nil {
		s.recordNotFound(w, id)
		return
	}
	in, ok := s.store.get(n)
	if !ok {
		s.recordNotFound(w, id)
		return
	}
	writeJSON(w, http.StatusOK, MediaType, document{Data: toResource(st.base(r), in, fields)})
}

// parseFields reads fields[threat_indicators], a sparse fieldset.
func parseFields(r *http.Request) (map[string]bool, *errorObject) {
	q := r.URL.Query()
	for k := range q {
		if strings.HasPrefix(k, "fields[") && k != "fields[threat_indicators]" {
			e := newError(http.StatusBadRequest, "101", "Invalid resource",
				strings.TrimSuffix(strings.TrimPrefix(k, "fields["), "]")+" is not a valid resource.")
			return nil, &e
		}
	}
	raw, ok := q["fields[threat_indicators]"]
	if !ok {
		return nil, nil
	}
	fields := map[string]bool{}
	for _, v := range raw {
		for name := range strings.SplitSeq(v, ",") {
			if !attributeNames[name] {
				e := newError(http.StatusBadRequest, "112", "Invalid field",
					name+" is not a valid field for threat_indicators.")
				return nil, &e
			}
			fields[name] = true
		}
	}
	return fields, nil
}

func (s *Server) serveList(w http.ResponseWriter, r *http.Request, st *settings) {
	params := r.URL.Query()
	fields, ferr := parseFields(r)
	if ferr != nil {
		s.badRequest(w, http.StatusBadRequest, *ferr)
		return
	}
	q := query{number: 1, size: DefaultPageSize}
	var exactTypes, exactValues []string
	for k, vs := range params {
		v := vs[len(vs)-1]
		switch {
		case strings.HasPrefix(k, "fields["):
		case k == "sort":
			keys, ok := parseSort(v)
			if !ok {
				s.badRequest(w, http.StatusBadRequest, newError(http.StatusBadRequest, "114", "Invalid sort criteria",
					v+" is not a valid sort criteria for threat_indicators"))
				return
			}
			q.sort = keys
		case k == "page[number]" || k == "page[size]":
			n, err := strconv.Atoi(v)
			which := strings.TrimSuffix(strings.TrimPrefix(k, "page["), "]")
			switch {
			case err != nil || n < 1:
				s.badRequest(w, http.StatusBadRequest, newError(http.StatusBadRequest, "118", "Invalid page value",
					v+" is not a valid value for "+which+" page parameter."))
				return
			case which == "size" && n > MaxPageSize:
				s.badRequest(w, http.StatusBadRequest, newError(http.StatusBadRequest, "118", "Invalid page value",
					"size exceeds maximum page size of "+strconv.Itoa(MaxPageSize)+"."))
				return
			case which == "size":
				q.size = n
			default:
				q.number = min(n, 1<<30)
			}
		case strings.HasPrefix(k, "filter[") && strings.HasSuffix(k, "]"):
			name := k[len("filter[") : len(k)-1]
			f, allowed, badValue := parseFilter(name, v)
			if !allowed {
				s.badRequest(w, http.StatusBadRequest, newError(http.StatusBadRequest, "102", "Filter not allowed",
					name+" is not allowed."))
				return
			}
			if badValue {
				s.badRequest(w, http.StatusBadRequest, newError(http.StatusBadRequest, "108", "Invalid filter value",
					v+" is not a valid value for "+name+"."))
				return
			}
			q.filters = append(q.filters, f)
			if f.op == "" && f.attr == attrType {
				exactTypes = f.values
			}
			if f.op == "" && f.attr == attrValue {
				exactValues = f.values
			}
		default:
			s.badRequest(w, http.StatusBadRequest, newError(http.StatusBadRequest, "105", "Param not allowed",
				k+" is not allowed."))
			return
		}
	}
	if exactTypes != nil && exactValues != nil {
		// The index answers type+value; the filters stay and recheck.
		q.types, q.values = exactTypes, exactValues
	}

	found, total := s.store.page(&q)
	base := st.base(r)
	doc := listDocument{Data: make([]resource, len(found))}
	for i, in := range found {
		doc.Data[i] = toResource(base, in, fields)
	}
	pages := (total + q.size - 1) / q.size
	keep := listParams(params)
	doc.Links.First = pageLink(base, keep, 1, q.size)
	if q.number > 1 {
		doc.Links.Prev = pageLink(base, keep, q.number-1, q.size)
	}
	if q.number < pages {
		doc.Links.Next = pageLink(base, keep, q.number+1, q.size)
	}
	doc.Links.Last = pageLink(base, keep, max(pages, 1), q.size)
	writeJSON(w, http.StatusOK, MediaType, doc)
}

// base is the scheme and host that links start with.
func (st *settings) base(r *http.Request) string {
	if st.BaseURL != "" {
		return strings.TrimRight(st.BaseURL, "/")
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

func (s *Server) recordNotFound(w http.ResponseWriter, id string) {
	s.stats.notFound.Add(1)
	s.writeErrors(w, http.StatusNotFound, newError(http.StatusNotFound, "404", "Record not found",
		"The record identified by "+id+" could not be found."))
}

func (s *Server) badRequest(w http.ResponseWriter, status int, e errorObject) {
	s.stats.badRequests.Add(1)
	s.writeErrors(w, status, e)
}

func (s *Server) unprocessable(w http.ResponseWriter, errs []fieldError) {
	if len(errs) == 1 && errs[0].msg == msgTaken {
		s.stats.duplicates.Add(1)
	} else {
		s.stats.invalid.Add(1)
	}
	s.writeErrors(w, http.StatusUnprocessableEntity, validationErrors(errs)...)
}

func (s *Server) writeErrors(w http.ResponseWriter, status int, errs ...errorObject) {
	writeJSON(w, status, MediaType, errorDocument{Errors: errs})
}
