package main

import (
	"context"
	"net/http"
	"testing"
)

func TestSimThreatQOutageKnob(t *testing.T) {
	t.Parallel()
	s := startSim(t, 0)
	ctx := context.Background()
	q := s.threatq(t)
	if err := q.Ping(ctx); err != nil {
		t.Fatalf("before the outage: %v", err)
	}
	post := func(path string) {
		t.Helper()
		resp, err := http.Post(s.threatqURL+path, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("POST %s: %s", path, resp.Status)
		}
	}
	post("/_sim/threatq/down")
	resp, err := http.Post(s.threatqURL+"/api/token", "application/x-www-form-urlencoded", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("during the outage, the token endpoint answered %s", resp.Status)
	}
	post("/_sim/threatq/up")
	if err := q.Ping(ctx); err != nil {
		t.Fatalf("after the outage: %v", err)
	}
	// The knob is not a ThreatQ API path: a GET is ThreatQ's own 404.
	resp, err = http.Get(s.threatqURL + "/_sim/threatq/down")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusNoContent {
		t.Fatalf("GET switched the outage")
	}
}
