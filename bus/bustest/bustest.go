// Package bustest starts what tests of tqtriage need of NATS: an embedded
// JetStream server with its store in the test's temporary directory,
// stopped when the test ends, and connections to it as separate processes
// would make them.
package bustest

import (
	"context"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/rs/zerolog"

	"github.com/tqtriage/tqtriage/bus"
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
