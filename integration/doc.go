// Package integration holds the tests that run the real pipeline: an
// embedded JetStream server, the worker, write-back and publisher as they
// run in production, against the Triage and ThreatQ simulators. Each test
// names the behaviour it proves.
package integration
