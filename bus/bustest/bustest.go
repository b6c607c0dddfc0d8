// Package bustest starts what tests of tqtriage need of NATS: an embedded
// JetStream server with its store in the test's temporary directory,
// stopped when the test ends, and connections to it as separate processes
// would make them.
package bustest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/rs/zerolog"

	"github.com/tqtriage/tqtriage/bus"
	"github.com/tqtriage/tqtriage/internal/fixture"
)

// Server starts an embedded JetStream server for the test.
func Server(tb testing.TB) *server.Server {
	tb.Helper()
	s, err := bus.StartEmbedded(bus.EmbeddedOptions{StoreDir: tb.TempDir()})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

// Connect opens a connection of its own to s over TCP, closed when the
// test ends. cfg's URL is set to s's.
func Connect(tb testing.TB, s *server.Server, cfg bus.Config, log zerolog.Logger) *bus.Bus {
	tb.Helper()
	cfg.URL = s.ClientURL()
	b, err := bus.Connect(context.Background(), cfg, log)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(b.Close)
	return b
}

// Roles are the users of deployments/nats/permissions.conf.
var Roles = []string{"publisher", "worker", "writeback", "viewer", "operator"}

// Secured starts an embedded JetStream server configured with the
// permission profiles the project ships, and returns it with a function
// that gives the URL a role's user connects with.
func Secured(tb testing.TB) (*server.Server, func(role string) string) {
	tb.Helper()
	for _, r := range Roles {
		tb.Setenv("TQTRIAGE_"+strings.ToUpper(r)+"_PASSWORD", "pw-"+r)
	}
	opts, err := server.ProcessConfigFile(fixture.Path(tb, "deployments/nats/permissions.conf"))
	if err != nil {
		tb.Fatal(err)
	}
	opts.Host, opts.Port, opts.JetStream, opts.StoreDir, opts.NoSigs, opts.NoLog = "127.0.0.1", -1, true, tb.TempDir(), true, true
	s, err := server.NewServer(opts)
	if err != nil {
		tb.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		tb.Fatal("secured NATS server not ready")
	}
	tb.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s, func(role string) string {
		return fmt.Sprintf("nats://%s:pw-%s@%s", role, role, strings.TrimPrefix(s.ClientURL(), "nats://"))
	}
}
