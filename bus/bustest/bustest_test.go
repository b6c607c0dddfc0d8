package bustest

import (
	"testing"

	"github.com/nats-io/nats.go"
)

// TestSecuredServerTakesEachRoleAndRefusesAWrongPassword: the shipped
// permission profiles load, and their users are who they say.
func TestSecuredServerTakesEachRoleAndRefusesAWrongPassword(t *testing.T) {
	s, url := Secured(t)
	for _, r := range Roles {
		nc, err := nats.Connect(url(r))
		if err != nil {
			t.Fatalf("%s: %v", r, err)
		}
		nc.Close()
	}
	if nc, err := nats.Connect(s.ClientURL(), nats.UserInfo("worker", "wrong")); err == nil {
		nc.Close()
		t.Fatal("a wrong password was accepted")
	}
}
