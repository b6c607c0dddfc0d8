package main

import (
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tqtriage/tqtriage/bus"
)

// A one-shot setup that starts with its cluster (compose, a Kubernetes
// Job) waits for NATS with --wait.
func TestSetupWaitsForNATS(t *testing.T) {
	t.Parallel()
	// A port nothing listens on yet.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	url := "nats://127.0.0.1:" + strconv.Itoa(port)

	r := tq(t, minimal().with("NATS_URL", url), "", "setup")
	mustCode(t, r, 1) // without --wait: one try

	p := start(t, minimal().with("NATS_URL", url, "TQTRIAGE_SETUP_WAIT", "30s"), true, "setup")
	p.waitFor(t, regexp.MustCompile(`NATS not ready for setup; trying again`))
	s, err := bus.StartEmbedded(bus.EmbeddedOptions{StoreDir: t.TempDir(), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Shutdown(); s.WaitForShutdown() }()
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatal("setup did not end within 30s of NATS starting")
	}
	if p.code != 0 || !strings.Contains(p.stdout.String(), "streams, consumers and buckets are in place") {
		t.Fatalf("setup exit %d:\n%s%s", p.code, p.stdout.String(), p.stderr.String())
	}
}
