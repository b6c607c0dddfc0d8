package redact

import (
	"slices"
	"sync"
)

// Secrets is the secrets a client read lately (the current one and the one
// it replaced), kept only to hide them in what a server says: a secret
// rotated where it is kept is read anew for each token request, and an
// answer to a request made with the old one may still quote it. The zero
// value is empty and ready; it is safe for concurrent use.
type Secrets struct {
	mu   sync.Mutex
	last []string
}

// Add remembers v, forgetting all but the one before it.
func (s *Secrets) Add(v string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.last) > 0 && s.last[len(s.last)-1] == v {
		return
	}
	s.last = append(s.last, v)
	if len(s.last) > 2 {
		s.last = s.last[len(s.last)-2:]
	}
}

// List returns the secrets remembered, oldest first, in a slice of the
// caller's own.
func (s *Secrets) List() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.last)
}
