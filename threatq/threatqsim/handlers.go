package threatqsim

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

func (s *Server) routes() {
	m := http.NewServeMux()
	m.HandleFunc("POST /api/token", s.gate(false, s.token))
	m.HandleFunc("GET /api/indicators/query/hash/{hash}", s.gate(true, s.collectionPage))
	m.HandleFunc("GET /api/search/query/{hash}", s.gate(true, s.collectionName))
	m.HandleFunc("GET /api/search/query", s.gate(true, s.searchList))
	m.HandleFunc("GET /api/indicators/{id}", s.gate(true, s.getIndicator))
	m.HandleFunc("GET /api/indicators/{id}/attributes", s.gate(true, s.listAttributes))
	m.HandleFunc("POST /api/indicators/{id}/attributes", s.gate(true, s.addAttributes))
	m.HandleFunc("PUT /api/indicators/{id}/attributes/{row}", s.gate(true, s.changeAttribute))
	m.HandleFunc("DELETE /api/indicators/{id}/attributes/{row}", s.gate(true, s.deleteAttribute))
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeErrors(w, http.StatusNotFound, "The requested resource was not found.")
	})
	s.mux = m
}

// gate applies the knobs (latency, outage, injected failures, an
// indicator's failures) and, for API calls, the bearer check, before h.
// The subject of the token is passed on.
func (s *Server) gate(api bool, h func(w http.ResponseWriter, r *http.Request, subject string)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		latency, down, retryAfter := s.latency, s.down, s.retryAfter
		fail := 0
		var okErr *okError
		if api {
			id, about := pathID(r, "id")
			switch {
			case about && s.failing[id] != 0:
				fail = s.failing[id]
			case len(s.failNext) > 0:
				fail = s.failNext[0]
				s.failNext = s.failNext[1:]
			case len(s.okErrors) > 0:
				okErr = &s.okErrors[0]
				s.okErrors = s.okErrors[1:]
			case s.errorRate > 0 && s.rng.Float64() < s.errorRate:
				fail = []int{500, 502, 503}[s.rng.IntN(3)]
			}
		}
		s.mu.Unlock()
		if latency > 0 && !sleep(r.Context(), latency) {
			return
		}
		if api && s.throttled(w) {
			return
		}
		if down {
			fail = http.StatusServiceUnavailable
		}
		if fail != 0 {
			s.n.injected.Add(1)
			if (fail == http.StatusTooManyRequests || fail == http.StatusServiceUnavailable) && retryAfter > 0 {
				w.Header().Set("Retry-After", strconv.FormatInt(int64(max(time.Second, retryAfter)/time.Second), 10))
			}
			writeErrors(w, fail, http.StatusText(fail))
			return
		}
		if okErr != nil && !down {
			s.n.injected.Add(1)
			if okErr.status != 0 {
				writeJSON(w, http.StatusOK, map[string]any{"errors": []map[string]string{{"status": strconv.Itoa(okErr.status), "title": okErr.msg}}})
			} else {
				writeErrors(w, http.StatusOK, okErr.msg)
			}
			return
		}
		subject := ""
		if api {
			var ok bool
			if subject, ok = s.authorize(r); !ok {
				s.n.unauthorized.Add(1)
				w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
				writeJSON(w, http.StatusUnauthorized, map[string]string{"message": "Unauthenticated."})
				return
			}
			if s.refused(w) {
				return
			}
		}
		h(w, r, subject)
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// authorize accepts exactly "Bearer <token>", capital B: ThreatQ rejects
// "bearer" even though OAuth says the scheme is case-insensitive.
func (s *Server) authorize(r *http.Request) (string, bool) {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || tok == "" {
		return "", false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, ok := s.tokens[tok]
	if !ok {
		return "", false
	}
	if !time.Now().Before(sess.expires) {
		delete(s.tokens, tok)
		return "", false
	}
	return sess.subject, true
}

// --- token -----------------------------------------------------------------

// token serves POST /api/token. grant_type may be in the query or the
// body; the body may be a form or JSON (both are seen in public clients).
func (s *Server) token(w http.ResponseWriter, r *http.Request, _ string) {
	s.n.tokenRequests.Add(1)
	params, err := tokenParams(r)
	if err != nil {
		writeOAuthError(w, http.StatusBadRequest, "invalid_request", err.Error())
		return
	}
	grant := r.URL.Query().Get("grant_type")
	if grant == "" {
		grant = params.Get("grant_type")
	}
	s.mu.Lock()
	creds := s.creds
	s.mu.Unlock()
	var subject string
	switch grant {
	case "client_credentials":
		id, secret, ok := r.BasicAuth()
		if !ok {
			id, secret = params.Get("client_id"), params.Get("client_secret")
		}
		if id != creds.ClientID || secret != creds.ClientSecret {
			writeOAuthError(w, http.StatusUnauthorized, "invalid_client", "Client authentication failed")
			return
		}
		subject = id
	case "password":
		if params.Get("client_id") != creds.ClientID {
			writeOAuthError(w, http.StatusUnauthorized, "invalid_client", "Client authentication failed")
			return
		}
		if params.Get("email") != creds.Email || params.Get("password") != creds.Password {
			writeOAuthError(w, http.StatusBadRequest, "invalid_grant", "The user credentials were incorrect.")
			return
		}
		subject = params.Get("email")
	case "refresh_token":
		rt := r.URL.Query().Get("refresh_token")
		if rt == "" {
			rt = params.Get("refresh_token")
		}
		s.mu.Lock()
		subject = s.refresh[rt]
		delete(s.refresh, rt) // a refresh token is good once
		s.mu.Unlock()
		if subject == "" {
			writeOAuthError(w, http.StatusBadRequest, "invalid_request", "The refresh token is invalid.")
			return
		}
	case "":
		writeOAuthError(w, http.StatusBadRequest, "unsupported_grant_type", "The grant type is missing.")
		return
	default:
		writeOAuthError(w, http.StatusBadRequest, "unsupported_grant_type", "The authorization grant type is not supported by the authorization server.")
		return
	}
	access, refresh := newSecret(), newSecret()
	now := time.Now()
	s.mu.Lock()
	life := s.tokenLifetime
	for t, sess := range s.tokens {
		if !now.Before(sess.expires) {
			delete(s.tokens, t)
		}
	}
	s.tokens[access] = session{subject: subject, expires: now.Add(life)}
	s.refresh[refresh] = subject
	s.mu.Unlock()
	s.n.tokensIssued.Add(1)
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token":  access,
		"token_type":    creds.TokenType,
		"expires_in":    max(int64(1), int64(life/time.Second)),
		"refresh_token": refresh,
	})
}

func tokenParams(r *http.Request) (url.Values, error) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	if err != nil {
		return nil, errors.New("unreadable body")
	}
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if ct == "application/json" {
		var m map[string]any
		if len(bytes.TrimSpace(body)) > 0 {
			if err := json.Unmarshal(body, &m); err != nil {
				return nil, errors.New("the body is not valid JSON")
			}
		}
		v := url.Values{}
		for k, x := range m {
			if str, ok := x.(string); ok {
				v.Set(k, str)
			}
		}
		return v, nil
	}
	v, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, errors.New("the body is not a valid form")
	}
	return v, nil
}

// --- collections -----------------------------------------------------------

// collectionPage serves GET /api/indicators/query/hash/{hash}. Indicators
// come in ascending id order (which is also their updated_at order here);
// the cursor is the last id served, opaque like Solr's.
func (s *Server) collectionPage(w http.ResponseWriter, r *http.Request, _ string) {
	s.n.pages.Add(1)
	q := r.URL.Query()
	limit := defaultPageSize
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			writeErrors(w, http.StatusBadRequest, "The limit must be a positive integer.")
			return
		}
		limit = n
	}
	cursor := q.Get("cursorMark")
	if cursor == "" {
		cursor = "*"
	}
	after := int64(-1)
	if cursor != "*" {
		id, ok := decodeCursor(cursor)
		if !ok {
			writeErrors(w, http.StatusBadRequest, "Unable to parse 'cursorMark' after totem: value must either be '*' or the 'nextCursorMark' returned by a previous search: "+cursor)
			return
		}
		after = id
	}
	s.mu.Lock()
	limit = min(limit, s.maxPage)
	c, ok := s.collections[r.PathValue("hash")]
	if !ok {
		s.mu.Unlock()
		writeErrors(w, http.StatusNotFound, "The requested data collection could not be found.")
		return
	}
	total, ids := c.page(after, limit)
	docs := make([]indicatorDoc, 0, len(ids))
	for _, id := range ids {
		in, _ := s.indicatorLocked(id)
		docs = append(docs, s.indicatorDocLocked(in))
	}
	s.mu.Unlock()

	// The last page (no indicators) repeats the cursor asked for, as Solr
	// does, and has "data": {}.
	next := cursor
	if len(ids) > 0 {
		next = encodeCursor(ids[len(ids)-1])
	}
	b := appendPage(make([]byte, 0, 1024*(len(docs)+1)), total, docs, next, limit)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
}

// page returns the collection's size and up to limit ids after the id
// after (-1: from the start).
func (c *collection) page(after int64, limit int) (total int, ids []int64) {
	if c.gen != nil {
		g := c.gen
		start := 0
		if after >= g.first {
			start = int(min(after-g.first+1, int64(g.n)))
		}
		end := min(start+limit, g.n)
		ids = make([]int64, 0, end-start)
		for i := start; i < end; i++ {
			ids = append(ids, g.first+int64(i))
		}
		return g.n, ids
	}
	start := sort.Search(len(c.ids), func(i int) bool { return c.ids[i] > after })
	end := min(start+limit, len(c.ids))
	return len(c.ids), append([]int64(nil), c.ids[start:end]...)
}

// Cursors look like Solr's (base64 of a binary sort key): two marker
// bytes, the id as 8 bytes, "&", the id in decimal.
func encodeCursor(id int64) string {
	b := make([]byte, 0, 32)
	b = append(b, 0x02, 0x82)
	b = binary.BigEndian.AppendUint64(b, uint64(id))
	b = append(b, '&')
	b = strconv.AppendInt(b, id, 10)
	return base64.StdEncoding.EncodeToString(b)
}

func decodeCursor(c string) (int64, bool) {
	b, err := base64.StdEncoding.DecodeString(c)
	if err != nil || len(b) < 12 || b[0] != 0x02 || b[1] != 0x82 || b[10] != '&' {
		return 0, false
	}
	id := int64(binary.BigEndian.Uint64(b[2:10]))
	dec, err := strconv.ParseInt(string(b[11:]), 10, 64)
	if err != nil || dec != id || id < 0 {
		return 0, false
	}
	return id, true
}

// collectionName serves GET /api/search/query/{hash}?fields=name, unless
// it is turned off.
func (s *Server) collectionName(w http.ResponseWriter, r *http.Request, _ string) {
	s.mu.Lock()
	c, ok := s.collections[r.PathValue("hash")]
	off := s.noSearchHash
	s.mu.Unlock()
	if off {
		writeErrors(w, http.StatusNotFound, "The requested resource was not found.")
		return
	}
	s.n.names.Add(1)
	if !ok {
		writeErrors(w, http.StatusNotFound, "The requested search could not be found.")
		return
	}
	all := map[string]any{"id": c.id, "name": c.name, "hash": c.hash}
	data := all
	if f := r.URL.Query().Get("fields"); f != "" {
		data = map[string]any{}
		for _, name := range strings.Split(f, ",") {
			if v, ok := all[strings.TrimSpace(name)]; ok {
				data[strings.TrimSpace(name)] = v
			}
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": data})
}

// searchList serves GET /api/search/query: the saved searches (data
// collections) in id order, {"total","data":[{"id","name","hash"}]}, with
// optional limit and offset.
func (s *Server) searchList(w http.ResponseWriter, r *http.Request, _ string) {
	s.n.searchLists.Add(1)
	q := r.URL.Query()
	offset, _ := strconv.Atoi(q.Get("offset"))
	limit, err := strconv.Atoi(q.Get("limit"))
	if err != nil || limit <= 0 {
		limit = defaultPageSize
	}
	s.mu.Lock()
	all := make([]*collection, 0, len(s.collections))
	for _, c := range s.collections {
		all = append(all, c)
	}
	s.mu.Unlock()
	sort.Slice(all, func(i, j int) bool { return all[i].id < all[j].id })
	start := min(max(offset, 0), len(all))
	end := min(start+limit, len(all))
	docs := make([]map[string]any, 0, end-start)
	for _, c := range all[start:end] {
		docs = append(docs, map[string]any{"id": c.id, "name": c.name, "hash": c.hash})
	}
	writeJSON(w, http.StatusOK, map[string]any{"total": len(all), "data": docs})
}

// getIndicator serves GET /api/indicators/{id}.
func (s *Server) getIndicator(w http.ResponseWriter, r *http.Request, _ string) {
	s.n.indicatorGets.Add(1)
	id, ok := pathID(r, "id")
	s.mu.Lock()
	var in *indicator
	if ok {
		in, ok = s.indicatorLocked(id)
	}
	if !ok {
		s.mu.Unlock()
		writeErrors(w, http.StatusNotFound, "The requested indicator could not be found.")
		return
	}
	doc := s.indicatorDocLocked(in)
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"data": doc})
}

// --- attributes ------------------------------------------------------------

// listAttributes serves GET /api/indicators/{id}/attributes, with optional
// limit and offset.
func (s *Server) listAttributes(w http.ResponseWriter, r *http.Request, _ string) {
	s.n.attrLists.Add(1)
	id, ok := s.knownIndicator(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	offset, _ := strconv.Atoi(q.Get("offset"))
	limit, err := strconv.Atoi(q.Get("limit"))
	if err != nil || limit <= 0 {
		limit = 1 << 30
	}
	s.mu.Lock()
	rows := s.attrs[id]
	total := len(rows)
	start := min(max(offset, 0), total)
	end := min(start+limit, total)
	docs := make([]attributeDoc, 0, end-start)
	for _, row := range rows[start:end] {
		docs = append(docs, s.attributeDocLocked(row))
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"total": total, "data": docs})
}

type attributeInput struct {
	Name    *json.RawMessage `json:"name"`
	Value   *json.RawMessage `json:"value"`
	Sources []struct {
		Name string `json:"name"`
	} `json:"sources"`
}

// addAttributes serves POST /api/indicators/{id}/attributes: one object or
// an array of them. Without sources, the token's subject is the source.
func (s *Server) addAttributes(w http.ResponseWriter, r *http.Request, subject string) {
	s.n.attrAdds.Add(1)
	s.countWrite(r)
	id, ok := s.knownIndicator(w, r)
	if !ok {
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		writeErrors(w, http.StatusBadRequest, "unreadable body")
		return
	}
	body = bytes.TrimSpace(body)
	array := len(body) > 0 && body[0] == '['
	if array && s.creds.NoAttributeArrays {
		writeFieldErrors(w, map[string][]string{"name": {"The name field is required."}, "value": {"The value field is required."}})
		return
	}
	var inputs []attributeInput
	if array {
		err = json.Unmarshal(body, &inputs)
	} else {
		var one attributeInput
		err = json.Unmarshal(body, &one)
		inputs = []attributeInput{one}
	}
	if err != nil {
		writeErrors(w, http.StatusBadRequest, "The request body is not valid JSON.")
		return
	}
	type valid struct {
		name, value string
		sources     []string
	}
	fieldErrs := map[string][]string{}
	var ok2 []valid
	for i, in := range inputs {
		prefix := ""
		if array {
			prefix = strconv.Itoa(i) + "."
		}
		name, nameOK := stringField(in.Name)
		value, valueOK := stringField(in.Value)
		if !nameOK {
			fieldErrs[prefix+"name"] = append(fieldErrs[prefix+"name"], "The name field is required.")
		}
		if !valueOK {
			fieldErrs[prefix+"value"] = append(fieldErrs[prefix+"value"], "The value field is required.")
		}
		var srcs []string
		for _, src := range in.Sources {
			if src.Name != "" {
				srcs = append(srcs, src.Name)
			}
		}
		if len(srcs) == 0 {
			srcs = []string{subject}
		}
		ok2 = append(ok2, valid{name, value, srcs})
	}
	if len(fieldErrs) > 0 {
		writeFieldErrors(w, fieldErrs)
		return
	}
	now := time.Now().UTC()
	s.mu.Lock()
	docs := make([]attributeDoc, 0, len(ok2))
	for _, v := range ok2 {
		docs = append(docs, s.attributeDocLocked(s.addRowLocked(id, v.name, v.value, v.sources, now)))
	}
	s.mu.Unlock()
	if array {
		writeJSON(w, http.StatusCreated, map[string]any{"total": len(docs), "data": docs})
		return
	}
	writeJSON(w, http.StatusCreated, map[string]any{"data": docs[0]})
}

// changeAttribute serves PUT /api/indicators/{id}/attributes/{row} with
// {"value":…} (and optionally sources, which are added to the row's).
func (s *Server) changeAttribute(w http.ResponseWriter, r *http.Request, subject string) {
	s.n.attrChanges.Add(1)
	s.countWrite(r)
	id, row, ok := s.knownRow(w, r)
	if !ok {
		return
	}
	var in attributeInput
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&in); err != nil {
		writeErrors(w, http.StatusBadRequest, "The request body is not valid JSON.")
		return
	}
	value, ok := stringField(in.Value)
	if !ok {
		writeFieldErrors(w, map[string][]string{"value": {"The value field is required."}})
		return
	}
	s.mu.Lock()
	var doc attributeDoc
	found := false
	for _, a := range s.attrs[id] {
		if a.id == row {
			a.value = value
			a.updated = time.Now().UTC().Truncate(time.Second)
			for _, src := range in.Sources {
				if src.Name != "" && !contains(a.sources, src.Name) {
					a.sources = append(a.sources, src.Name)
					s.sourceLocked(src.Name)
				}
			}
			doc, found = s.attributeDocLocked(a), true
			break
		}
	}
	s.mu.Unlock()
	if !found { // removed meanwhile
		writeErrors(w, http.StatusNotFound, "The requested attribute could not be found.")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": doc})
}

// deleteAttribute serves DELETE /api/indicators/{id}/attributes/{row}.
func (s *Server) deleteAttribute(w http.ResponseWriter, r *http.Request, _ string) {
	s.n.attrDeletes.Add(1)
	s.countWrite(r)
	id, row, ok := s.knownRow(w, r)
	if !ok {
		return
	}
	s.mu.Lock()
	rows := s.attrs[id]
	for i, a := range rows {
		if a.id == row {
			s.attrs[id] = append(rows[:i:i], rows[i+1:]...)
			delete(s.rowOwner, row)
			break
		}
	}
	if len(s.attrs[id]) == 0 {
		delete(s.attrs, id)
	}
	s.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

// countWrite counts an attribute write to the indicator its path names.
func (s *Server) countWrite(r *http.Request) {
	if id, ok := pathID(r, "id"); ok {
		s.mu.Lock()
		s.writes[id]++
		s.mu.Unlock()
	}
}

func (s *Server) knownIndicator(w http.ResponseWriter, r *http.Request) (int64, bool) {
	id, ok := pathID(r, "id")
	if ok {
		s.mu.Lock()
		_, ok = s.indicatorLocked(id)
		s.mu.Unlock()
	}
	if !ok {
		writeErrors(w, http.StatusNotFound, "The requested indicator could not be found.")
		return 0, false
	}
	return id, true
}

func (s *Server) knownRow(w http.ResponseWriter, r *http.Request) (int64, int64, bool) {
	id, ok := s.knownIndicator(w, r)
	if !ok {
		return 0, 0, false
	}
	row, ok := pathID(r, "row")
	if ok {
		s.mu.Lock()
		ok = s.rowOwner[row] == id
		s.mu.Unlock()
	}
	if !ok {
		writeErrors(w, http.StatusNotFound, "The requested attribute could not be found.")
		return 0, 0, false
	}
	return id, row, true
}

func pathID(r *http.Request, name string) (int64, bool) {
	id, err := strconv.ParseInt(r.PathValue(name), 10, 64)
	return id, err == nil && id > 0
}

// stringField reads a required value: a non-empty string, or a number
// (ThreatQ stores attribute values as text).
func stringField(raw *json.RawMessage) (string, bool) {
	if raw == nil {
		return "", false
	}
	var s string
	if err := json.Unmarshal(*raw, &s); err == nil {
		return s, strings.TrimSpace(s) != ""
	}
	var n json.Number
	if err := json.Unmarshal(*raw, &n); err == nil {
		return n.String(), true
	}
	return "", false
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// --- documents -------------------------------------------------------------

// The shapes below follow the public fixtures field for field
// (elastic_data_collection_page1.json, siemplify_add_attribute_response.json).

type collectionPageDoc struct {
	Total          int    `json:"total"`
	Data           any    `json:"data"`
	NextCursorMark string `json:"nextCursorMark"`
	Limit          int    `json:"limit"`
}

type indicatorDoc struct {
	Class               string               `json:"class"`
	Score               int                  `json:"score"`
	Value               string               `json:"value"`
	ExpiresCalculatedAt string               `json:"expires_calculated_at"`
	TouchedAt           string               `json:"touched_at"`
	ID                  int64                `json:"id"`
	UpdatedAt           string               `json:"updated_at"`
	PublishedAt         string               `json:"published_at"`
	CreatedAt           string               `json:"created_at"`
	StatusID            int64                `json:"status_id"`
	Hash                string               `json:"hash"`
	TypeID              int64                `json:"type_id"`
	Adversaries         []struct{}           `json:"adversaries"`
	Type                typeDoc              `json:"type"`
	Status              statusDoc            `json:"status"`
	Attributes          []embeddedAttribute  `json:"attributes"`
	Sources             []indicatorSourceDoc `json:"sources"`
}

type typeDoc struct {
	Name  string `json:"name"`
	ID    int64  `json:"id"`
	Class string `json:"class"`
}

type statusDoc struct {
	Name        string `json:"name"`
	ID          int64  `json:"id"`
	Description string `json:"description"`
}

type embeddedAttribute struct {
	Value       string `json:"value"`
	CreatedAt   string `json:"created_at"`
	IndicatorID int64  `json:"indicator_id"`
	UpdatedAt   string `json:"updated_at"`
	AttributeID int64  `json:"attribute_id"`
	ID          int64  `json:"id"`
	TouchedAt   string `json:"touched_at"`
	Name        string `json:"name"`
}

type indicatorSourceDoc struct {
	IndicatorID       int64  `json:"indicator_id"`
	IndicatorStatusID int64  `json:"indicator_status_id"`
	PublishedAt       string `json:"published_at"`
	SourceID          int64  `json:"source_id"`
	ID                int64  `json:"id"`
	CreatedAt         string `json:"created_at"`
	SourceType        string `json:"source_type"`
	CreatorSourceID   int64  `json:"creator_source_id"`
	IndicatorTypeID   int64  `json:"indicator_type_id"`
	ReferenceID       int64  `json:"reference_id"`
	UpdatedAt         string `json:"updated_at"`
	Name              string `json:"name"`
}

type attributeDoc struct {
	ID          int64             `json:"id"`
	AttributeID int64             `json:"attribute_id"`
	IndicatorID int64             `json:"indicator_id"`
	Name        string            `json:"name"`
	Value       string            `json:"value"`
	CreatedAt   string            `json:"created_at"`
	UpdatedAt   string            `json:"updated_at"`
	TouchedAt   string            `json:"touched_at"`
	Attribute   attributeTypeDoc  `json:"attribute"`
	Sources     []attributeSrcDoc `json:"sources"`
}

type attributeTypeDoc struct {
	UpdatedAt string `json:"updated_at"`
	CreatedAt string `json:"created_at"`
	ID        int64  `json:"id"`
	Name      string `json:"name"`
}

type attributeSrcDoc struct {
	Name        string         `json:"name"`
	CreatedAt   string         `json:"created_at"`
	UpdatedAt   string         `json:"updated_at"`
	PublishedAt *string        `json:"published_at"`
	ReferenceID int64          `json:"reference_id"`
	Pivot       attributePivot `json:"pivot"`
	Type        string         `json:"type"`
	ID          int64          `json:"id"`
	TLPID       *int64         `json:"tlp_id"`
}

type attributePivot struct {
	SourceID             int64 `json:"source_id"`
	CreatorSourceID      int64 `json:"creator_source_id"`
	ID                   int64 `json:"id"`
	IndicatorAttributeID int64 `json:"indicator_attribute_id"`
}

func (s *Server) indicatorDocLocked(in *indicator) indicatorDoc {
	t := s.typeLocked(in.typ)
	st := s.statuses[in.status]
	created := ts(s.created(in.id))
	srcID := s.sourceLocked(in.source)
	doc := indicatorDoc{
		Class:               t.class,
		Score:               in.score,
		Value:               in.value,
		ExpiresCalculatedAt: ts(s.created(in.id).Add(30 * 24 * time.Hour)),
		TouchedAt:           created,
		ID:                  in.id,
		UpdatedAt:           created,
		PublishedAt:         created,
		CreatedAt:           created,
		StatusID:            st.id,
		Hash:                md5hex(in.typ + "\x00" + in.value),
		TypeID:              t.id,
		Adversaries:         []struct{}{},
		Type:                typeDoc{Name: t.name, ID: t.id, Class: t.class},
		Status:              statusDoc{Name: st.name, ID: st.id, Description: st.description},
		Attributes:          []embeddedAttribute{},
		Sources: []indicatorSourceDoc{{
			IndicatorID: in.id, IndicatorStatusID: st.id, PublishedAt: created, SourceID: srcID,
			ID: in.id + 7_000_000, CreatedAt: created, SourceType: "other_sources", CreatorSourceID: srcID,
			IndicatorTypeID: t.id, ReferenceID: 1, UpdatedAt: created, Name: in.source,
		}},
	}
	for _, a := range s.attrs[in.id] {
		doc.Attributes = append(doc.Attributes, embeddedAttribute{
			Value: a.value, CreatedAt: ts(a.created), IndicatorID: in.id, UpdatedAt: ts(a.updated),
			AttributeID: a.attributeID, ID: a.id, TouchedAt: ts(a.updated), Name: a.name,
		})
	}
	return doc
}

func (s *Server) attributeDocLocked(a *attrRow) attributeDoc {
	at := s.attrTypes[a.name]
	doc := attributeDoc{
		ID: a.id, AttributeID: a.attributeID, IndicatorID: a.indicatorID, Name: a.name, Value: a.value,
		CreatedAt: ts(a.created), UpdatedAt: ts(a.updated), TouchedAt: ts(a.updated),
		Attribute: attributeTypeDoc{UpdatedAt: ts(at.created), CreatedAt: ts(at.created), ID: at.id, Name: a.name},
		Sources:   make([]attributeSrcDoc, 0, len(a.sources)),
	}
	for i, name := range a.sources {
		id := s.sourceLocked(name)
		doc.Sources = append(doc.Sources, attributeSrcDoc{
			Name: name, CreatedAt: ts(a.created), UpdatedAt: ts(a.updated), ReferenceID: 1,
			Pivot: attributePivot{SourceID: id, CreatorSourceID: id, ID: a.id*10 + int64(i), IndicatorAttributeID: a.id},
			Type:  "other_sources", ID: id,
		})
	}
	return doc
}

// --- answers ---------------------------------------------------------------

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// writeErrors answers in the {"errors":[…]} shape.
func writeErrors(w http.ResponseWriter, status int, msgs ...string) {
	writeJSON(w, status, map[string]any{"errors": msgs})
}

// writeFieldErrors answers 422 in the {"data":{"errors":{field:[…]}}} shape.
func writeFieldErrors(w http.ResponseWriter, fields map[string][]string) {
	writeJSON(w, http.StatusUnprocessableEntity, map[string]any{"data": map[string]any{"errors": fields}})
}

// writeOAuthError answers like ThreatQ's OAuth server.
func writeOAuthError(w http.ResponseWriter, status int, code, desc string) {
	writeJSON(w, status, map[string]string{"error": code, "error_description": desc, "message": desc})
}
