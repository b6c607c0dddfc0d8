//go:build tools

// Package tools pins the project's dependencies before every one of them has
// an importer, so that go mod tidy keeps them. Removed once all are used.
package tools

import (
	_ "github.com/cenkalti/backoff/v4"
	_ "github.com/nats-io/nats-server/v2/server"
	_ "github.com/nats-io/nats.go/jetstream"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/rs/zerolog"
	_ "github.com/testcontainers/testcontainers-go"
	_ "golang.org/x/net/idna"
	_ "golang.org/x/oauth2/clientcredentials"
	_ "golang.org/x/term"
	_ "golang.org/x/time/rate"
)
