package threatqsim

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
	retryAfter atomic.Int64 // ThrottleFor's Retry-After, whole seconds
}

// SetCredentials changes the client id and secret that the
// client-credentials grant accepts, as when a secret is rotated; tokens
// issued before stay good until they expire (ExpireTokens ends them).
func (s *Server) SetCredentials(clientID, clientSecret string) {
	s.mu.Lock()
	s.creds.ClientID, s.creds.ClientSecret = clientID, clientSecret
	s.mu.Unlock()
}

// RefuseAPI answers every API request that carries a good token with
// status (401 or 403), while token grants still succeed: a client whose
// API access was withdrawn, for which a fresh token does not help. 0
// ends it.
func (s *Server) RefuseAPI(status int) { s.refusals.status.Store(int64(status)) }

// ThrottleFor answers every API request with 429 and a Retry-After of
// retryAfter (whole seconds, rounded up, at least 1) for d from now. A
// later call replaces it.
func (s *Server) ThrottleFor(d, retryAfter time.Duration) {
	s.refusals.retryAfter.Store(max(1, int64((retryAfter+time.Second-1)/time.Second)))
	s.refusals.until.Store(time.Now().Add(d).UnixNano())
}

func (s *Server) throttled(w http.ResponseWriter) bool {
	if time.Now().UnixNano() >= s.refusals.until.Load() {
		return false
	}
	s.n.injected.Add(1)
	w.Header().Set("Retry-After", strconv.FormatInt(s.refusals.retryAfter.Load(), 10))
	writeErrors(w, http.StatusTooManyRequests, "Too Many Requests")
	return true
}

func (s *Server) refused(w http.ResponseWriter) bool {
	switch st := int(s.refusals.status.Load()); st {
	case http.StatusUnauthorized:
		s.n.unauthorized.Add(1)
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		writeJSON(w, http.StatusUnauthorized, map[string]string{"message": "Unauthenticated."})
		return true
	case http.StatusForbidden:
		writeErrors(w, http.StatusForbidden, "This action is unauthorized.")
		return true
	}
	return false
}
