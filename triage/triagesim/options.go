package triagesim

import (
	"math"
	"strconv"
	"time"

	"golang.org/x/time/rate"
)

// Defaults of Options.
const (
	DefaultClientID      = "tqtriage-sim"
	DefaultClientSecret  = "tqtriage-sim-secret"
	DefaultTokenLifetime = 7200 * time.Second // Doorkeeper's and Triage's
	DefaultFailureStatus = 503
	DefaultMaxBodyBytes  = 1 << 20
	// DefaultPageSize applies when a list names no page[size]. Triage's own
	// default is not published; 20 is what its XSOAR integration asks for.
	DefaultPageSize = 20
	// MaxPageSize is jsonapi-resources' maximum as Triage configures it.
	MaxPageSize = 200
)

// Options configure a Server. The zero value is a well-behaved Triage with
// the default credentials. Every field can also be changed while the server
// runs, with SetOptions or the Set* methods.
type Options struct {
	// ClientID and ClientSecret are the only credentials the token endpoint
	// accepts (defaults DefaultClientID, DefaultClientSecret).
	ClientID     string
	ClientSecret string
	// TokenLifetime is how long an access token is good for
	// (default DefaultTokenLifetime). expires_in says it in whole seconds,
	// rounded up.
	TokenLifetime time.Duration

	// Latency delays every answer, token endpoint included, by Latency plus
	// a uniform random part of LatencyJitter.
	Latency       time.Duration
	LatencyJitter time.Duration

	// RateLimit is how many API requests a second the server takes, from all
	// clients together, as a token bucket of RateBurst (default: one
	// second's worth, at least 1); 0 means no limit. Beyond it the answer is
	// 429 with Retry-After. The token endpoint is not limited.
	RateLimit float64
	RateBurst int
	// RetryAfter is the Retry-After sent with a 429, in whole seconds
	// rounded up; 0 means the time the bucket takes to refill one request,
	// at least a second.
	RetryAfter time.Duration

	// FailureRate is the share (0..1) of API requests answered with
	// FailureStatus (default DefaultFailureStatus), after the rate limit and
	// before the token or the request is looked at. FailNext forces
	// failures one by one.
	FailureRate   float64
	FailureStatus int

	// Uniqueness is the rule a create (and a change of source) must keep:
	// the zero value, UniquePerSource, is what Triage documents ("only one
	// threat_type/threat_value pair per source"); UniquePerValue is a
	// Triage that keeps one indicator per type and value whatever its
	// source. A create or update that breaks it is answered 422 "has
	// already been taken".
	Uniqueness Uniqueness

	// BaseURL (scheme://host[:port]) is what links start with; empty means
	// the scheme and Host of each request. Another host than the one the
	// client was given plays a Triage behind a load balancer or a proxy,
	// whose links name a host the client must not send its token to.
	BaseURL string
	// MaxBodyBytes bounds a request body (default DefaultMaxBodyBytes);
	// beyond it the answer is 413.
	MaxBodyBytes int64
}

func (o Options) withDefaults() Options {
	if o.ClientID == "" {
		o.ClientID = DefaultClientID
	}
	if o.ClientSecret == "" {
		o.ClientSecret = DefaultClientSecret
	}
	if o.TokenLifetime <= 0 {
		o.TokenLifetime = DefaultTokenLifetime
	}
	if o.RateLimit > 0 && o.RateBurst <= 0 {
		o.RateBurst = max(1, int(math.Ceil(o.RateLimit)))
	}
	if o.FailureStatus == 0 {
		o.FailureStatus = DefaultFailureStatus
	}
	o.FailureRate = min(max(o.FailureRate, 0), 1)
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = DefaultMaxBodyBytes
	}
	return o
}

// Uniqueness says which indicators Triage keeps apart.
type Uniqueness int

// The rules.
const (
	UniquePerSource Uniqueness = iota // one per type, value and source
	UniquePerValue                    // one per type and value
)

// String names the rule as the sim command's flag does.
func (u Uniqueness) String() string {
	if u == UniquePerValue {
		return "value"
	}
	return "source"
}

// SetUniqueness changes the rule; what the store holds already stays.
func (s *Server) SetUniqueness(u Uniqueness) { s.change(func(o *Options) { o.Uniqueness = u }) }

// settings is one immutable generation of the options, swapped whole so
// that the request path reads them without a lock.
type settings struct {
	Options
	limiter    *rate.Limiter // nil: no limit
	retryAfter string        // the 429's Retry-After header value
}

func newSettings(o Options) *settings {
	o = o.withDefaults()
	st := &settings{Options: o}
	if o.RateLimit > 0 {
		st.limiter = rate.NewLimiter(rate.Limit(o.RateLimit), o.RateBurst)
		wait := o.RetryAfter
		if wait <= 0 {
			wait = time.Duration(float64(time.Second) / o.RateLimit)
		}
		st.retryAfter = formatSeconds(wait)
	}
	return st
}

func formatSeconds(d time.Duration) string {
	secs := max(int64(1), int64(math.Ceil(d.Seconds())))
	return strconv.FormatInt(secs, 10)
}

// Options returns the options in force, defaults filled in.
func (s *Server) Options() Options { return s.settings.Load().Options }

// SetOptions replaces every option at once (the rate limit's bucket starts
// full again). Tokens already granted keep their expiry.
func (s *Server) SetOptions(o Options) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.settings.Store(newSettings(o))
}

func (s *Server) change(f func(*Options)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o := s.settings.Load().Options
	f(&o)
	s.settings.Store(newSettings(o))
}

// SetLatency sets the delay of every answer: fixed plus a uniform random
// part of jitter.
func (s *Server) SetLatency(fixed, jitter time.Duration) {
	s.change(func(o *Options) { o.Latency, o.LatencyJitter = fixed, jitter })
}

// SetTokenLifetime sets the lifetime of tokens granted from now on.
func (s *Server) SetTokenLifetime(d time.Duration) {
	s.change(func(o *Options) { o.TokenLifetime = d })
}

// SetRateLimit limits API requests to perSecond (0: no limit) with a bucket
// of burst (0: one second's worth), answering 429 with a Retry-After of
// retryAfter (0: the bucket's refill time), rounded up to whole seconds.
func (s *Server) SetRateLimit(perSecond float64, burst int, retryAfter time.Duration) {
	s.change(func(o *Options) { o.RateLimit, o.RateBurst, o.RetryAfter = perSecond, burst, retryAfter })
}

// SetBaseURL sets what links start with (see Options.BaseURL).
func (s *Server) SetBaseURL(base string) {
	s.change(func(o *Options) { o.BaseURL = base })
}

// SetFailureRate sets the share (0..1) of API requests answered with the
// failure status (Options.FailureStatus).
func (s *Server) SetFailureRate(share float64) {
	s.change(func(o *Options) { o.FailureRate = share })
}

// FailNext answers the next n API requests with status (0: the options'
// FailureStatus), where FailureRate would (a 429 sent this way carries no
// Retry-After). It replaces an earlier FailNext that has not run out.
func (s *Server) FailNext(n int, status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failStatus.Store(int64(status))
	s.failNext.Store(int64(max(n, 0)))
}

// takeForcedFailure consumes one of FailNext's failures, if any is left.
func (s *Server) takeForcedFailure() (int, bool) {
	for {
		n := s.failNext.Load()
		if n <= 0 {
			return 0, false
		}
		if s.failNext.CompareAndSwap(n, n-1) {
			return int(s.failStatus.Load()), true
		}
	}
}
