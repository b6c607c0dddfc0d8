package triagesim

import (
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

// Knobs of the conditions that belong to a client rather than to one
// request: credentials that stop working, and a rate limit that refuses
// everything for a while. The token endpoint is never throttled.

// refusals is the state of RefuseAPI and ThrottleFor.
type refusals struct {
	status     atomic.Int64 // RefuseAPI's status; 0: none
	until      atomic.Int64 // ThrottleFor's end, Unix nanoseconds
	retryAfter atomic.Value // ThrottleFor's Retry-After header value
}

// SetCredentials changes the client id and secret the token endpoint
// accepts, as when a secret is rotated; tokens granted before stay good
// until they expire (RevokeTokens ends them).
func (s *Server) SetCredentials(id, secret string) {
	s.change(func(o *Options) { o.ClientID, o.ClientSecret = id, secret })
}

// RefuseAPI answers every API request that carries a good token with
// status, 401 (Doorkeeper's invalid_token) or 403 (a JSON:API "Forbidden"),
// while token grants still succeed: a client whose API access was
// withdrawn, for which a fresh token does not help. 0 ends it.
func (s *Server) RefuseAPI(status int) { s.refusals.status.Store(int64(status)) }

// ThrottleFor answers every API request with 429 and a Retry-After of
// retryAfter (whole seconds, rounded up, at least 1) for d from now: a
// rate limit whose window is much longer than one request, as a limit
// per minutes is. A later call replaces it.
func (s *Server) ThrottleFor(d, retryAfter time.Duration) {
	s.refusals.retryAfter.Store(formatSeconds(retryAfter))
	s.refusals.until.Store(s.now().Add(d).UnixNano())
}

// throttled answers 429 while a ThrottleFor window runs.
func (s *Server) throttled(w http.ResponseWriter) bool {
	if s.now().UnixNano() >= s.refusals.until.Load() {
		return false
	}
	s.stats.rateLimited.Add(1)
	if ra, ok := s.refusals.retryAfter.Load().(string); ok {
		w.Header().Set("Retry-After", ra)
	}
	s.writeErrors(w, http.StatusTooManyRequests, newError(http.StatusTooManyRequests, "429",
		"Too many requests", "Rate limit exceeded. Retry later."))
	return true
}

// refused answers RefuseAPI's status to a request whose token is good.
func (s *Server) refused(w http.ResponseWriter) bool {
	switch s.refusals.status.Load() {
	case http.StatusUnauthorized:
		s.stats.unauthorized.Add(1)
		w.Header().Set("WWW-Authenticate", `Bearer realm="Doorkeeper", error="invalid_token", error_description="`+tokenUnknown+`"`)
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(http.StatusUnauthorized)
		return true
	case http.StatusForbidden:
		s.writeErrors(w, http.StatusForbidden, newError(http.StatusForbidden, strconv.Itoa(http.StatusForbidden), "Forbidden",
			"You are not authorized to perform this action."))
		return true
	}
	return false
}
