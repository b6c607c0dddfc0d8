package triagesim

import (
	"crypto/rand"
	"encoding/base64"
	"sync"
	"time"
)

// tokens are the access tokens granted, with Doorkeeper's three reasons to
// refuse one: unknown, expired, revoked.
type tokens struct {
	mu     sync.RWMutex
	issued map[string]tokenState
	grants int // since the last sweep
}

type tokenState struct {
	expires time.Time
	revoked bool
}

// Doorkeeper's descriptions of invalid_token.
const (
	tokenUnknown = "The access token is invalid"
	tokenExpired = "The access token expired"
	tokenRevoked = "The access token was revoked"
)

// sweepEvery bounds the map: every so many grants, tokens long expired are
// forgotten (and would be answered as unknown, which is also a 401).
const sweepEvery = 4096

func newTokens() *tokens { return &tokens{issued: map[string]tokenState{}} }

func (t *tokens) grant(now time.Time, lifetime time.Duration) string {
	var b [32]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand since Go 1.24)
	tok := base64.RawURLEncoding.EncodeToString(b[:])
	t.mu.Lock()
	defer t.mu.Unlock()
	t.issued[tok] = tokenState{expires: now.Add(lifetime)}
	if t.grants++; t.grants >= sweepEvery {
		t.grants = 0
		for k, st := range t.issued {
			if now.Sub(st.expires) > time.Hour {
				delete(t.issued, k)
			}
		}
	}
	return tok
}

// check returns "" for a token that is good now, else why it is not.
func (t *tokens) check(tok string, now time.Time) string {
	t.mu.RLock()
	st, ok := t.issued[tok]
	t.mu.RUnlock()
	switch {
	case !ok:
		return tokenUnknown
	case st.revoked:
		return tokenRevoked
	case !now.Before(st.expires):
		return tokenExpired
	}
	return ""
}

// expireAll ends every token granted so far: the next request with any of
// them gets 401 "The access token expired".
func (t *tokens) expireAll(now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, st := range t.issued {
		if st.expires.After(now) {
			st.expires = now
			t.issued[k] = st
		}
	}
}

func (t *tokens) revokeAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, st := range t.issued {
		st.revoked = true
		t.issued[k] = st
	}
}
