package triagesim

import "sync/atomic"

// Stats counts what the simulator received and how it answered, since it
// started (or since ResetStats).
type Stats struct {
	// Requests counts every request by endpoint (the Endpoint* names),
	// whatever the answer.
	Requests map[string]int64

	TokenGrants   int64 // access tokens issued
	TokenRefusals int64 // grants refused (400, 401 at the token endpoint)

	Creates    int64 // indicators created through the API (Seed not counted)
	Updates    int64 // successful updates
	Duplicates int64 // 422 "has already been taken"
	Invalid    int64 // other 422s

	Unauthorized         int64 // 401s on the API
	RateLimited          int64 // 429s, those forced by FailNext included
	ServerErrors         int64 // 5xx (all of them simulated failures)
	NotFound             int64 // 404s: unknown records and routes
	BadRequests          int64 // 400s and 413s
	UnsupportedMediaType int64 // 415s
	NotAcceptable        int64 // 406s
}

// Total is the number of requests received.
func (st Stats) Total() int64 {
	var n int64
	for _, c := range st.Requests {
		n += c
	}
	return n
}

type counters struct {
	requests [numRoutes]atomic.Int64

	tokenGrants, tokenRefusals              atomic.Int64
	creates, updates, duplicates, invalid   atomic.Int64
	unauthorized, rateLimited, serverErrors atomic.Int64
	notFound, badRequests                   atomic.Int64
	unsupportedMediaType, notAcceptable     atomic.Int64
}

// Stats returns the counts so far. Each count is read atomically; counts of
// requests still in flight may be caught between two of them.
func (s *Server) Stats() Stats {
	c := &s.stats
	st := Stats{Requests: make(map[string]int64, numRoutes)}
	for i := range c.requests {
		if n := c.requests[i].Load(); n > 0 {
			st.Requests[routeNames[i]] = n
		}
	}
	st.TokenGrants, st.TokenRefusals = c.tokenGrants.Load(), c.tokenRefusals.Load()
	st.Creates, st.Updates = c.creates.Load(), c.updates.Load()
	st.Duplicates, st.Invalid = c.duplicates.Load(), c.invalid.Load()
	st.Unauthorized, st.RateLimited, st.ServerErrors = c.unauthorized.Load(), c.rateLimited.Load(), c.serverErrors.Load()
	st.NotFound, st.BadRequests = c.notFound.Load(), c.badRequests.Load()
	st.UnsupportedMediaType, st.NotAcceptable = c.unsupportedMediaType.Load(), c.notAcceptable.Load()
	return st
}

// ResetStats sets every count back to zero.
func (s *Server) ResetStats() {
	c := &s.stats
	for i := range c.requests {
		c.requests[i].Store(0)
	}
	for _, a := range []*atomic.Int64{
		&c.tokenGrants, &c.tokenRefusals, &c.creates, &c.updates, &c.duplicates, &c.invalid,
		&c.unauthorized, &c.rateLimited, &c.serverErrors, &c.notFound, &c.badRequests,
		&c.unsupportedMediaType, &c.notAcceptable,
	} {
		a.Store(0)
	}
}
