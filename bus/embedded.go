package bus

import (
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// EmbeddedOptions shape an in-process NATS server with JetStream.
type EmbeddedOptions struct {
	StoreDir string // where JetStream keeps its files (required: an empty one would fall back to a shared temp dir)
	Host     string // default 127.0.0.1
	Port     int    // default -1: a free port
}

// StartEmbedded starts a JetStream server in this process, for `run`,
// `demo` and tests. Stop it with Shutdown and WaitForShutdown.
func StartEmbedded(o EmbeddedOptions) (*server.Server, error) {
	if o.StoreDir == "" {
		return nil, errors.New("embedded NATS: a store directory is required")
	}
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	if o.Port == 0 {
		o.Port = -1
	}
	s, err := server.NewServer(&server.Options{
		ServerName: "tqtriage-embedded",
		Host:       o.Host,
		Port:       o.Port,
		JetStream:  true,
		StoreDir:   o.StoreDir,
		NoSigs:     true,
		NoLog:      true,
		// MaxPayload stays the server's default (1 MiB), as in a real
		// deployment, so that tests meet the limits production does.
	})
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(15 * time.Second) {
		s.Shutdown()
		return nil, errors.New("embedded NATS: not ready after 15s")
	}
	return s, nil
}
