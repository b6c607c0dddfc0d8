// Package sample is the demo's data: a ThreatQ data collection of all four
// supported types with a few invalid and unsupported indicators among them,
// and a few of its indicators already in Triage. `demo` and `sim` seed the
// simulators with it; it is deterministic, so a demo reads the same each time.
package sample

import (
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"github.com/tqtriage/tqtriage/threatq/threatqsim"
	"github.com/tqtriage/tqtriage/triage/triagesim"
)

// The sample collection's hash and name.
const (
	CollectionHash = "5a3d1c0e9f2b4d6a8c7e0f1a2b3c4d5e"
	CollectionName = "Phishing campaign indicators (sample)"
)

// Indicators returns n sample indicators (at least 20): MD5, SHA-256, URL
// and FQDN in turn, with a handful that the service must answer invalid
// (a short hash, a URL without a scheme, a host with a space) or
// unsupported (an IP address, an email address).
func Indicators(n int) []threatqsim.SeedIndicator {
	n = max(n, 20)
	out := make([]threatqsim.SeedIndicator, 0, n)
	bad := []threatqsim.SeedIndicator{
		{Type: "MD5", Value: "d41d8cd98f00b204e9800998ecf842"},        // 30 digits
		{Type: "SHA-256", Value: "not-a-sha256-value"},                // not hex
		{Type: "URL", Value: "login-update.example.net/verify"},       // no scheme
		{Type: "FQDN", Value: "mail server.example.org"},              // a space
		{Type: "IP Address", Value: "198.51.100.23"},                  // unsupported type
		{Type: "Email Address", Value: "billing@invoice-example.com"}, // unsupported type
	}
	for i := 0; len(out) < n; i++ {
		if i%50 == 17 && len(bad) > 0 {
			out = append(out, bad[0])
			bad = bad[1:]
			continue
		}
		typ, value := valid(i)
		out = append(out, threatqsim.SeedIndicator{Type: typ, Value: value, Score: i % 10})
	}
	return out
}

// valid returns the i-th valid sample indicator.
func valid(i int) (string, string) {
	switch i % 4 {
	case 0:
		h := md5.Sum([]byte(fmt.Sprintf("sample attachment %d", i)))
		return "MD5", hex.EncodeToString(h[:])
	case 1:
		h := sha256.Sum256([]byte(fmt.Sprintf("sample payload %d", i)))
		return "SHA-256", hex.EncodeToString(h[:])
	case 2:
		return "URL", fmt.Sprintf("https://secure-login-%d.example.com/account/verify?id=%d", i/4, i)
	default:
		return "FQDN", fmt.Sprintf("invoice-%d.phish.example.net", i/4)
	}
}

// Valid returns n valid indicators of the four types in turn, distinct
// for each prefix: for tests and benchmarks that need their own.
func Valid(prefix string, n int) []threatqsim.SeedIndicator {
	out := make([]threatqsim.SeedIndicator, n)
	for i := range out {
		h := fnv(prefix, i)
		switch i % 4 {
		case 0:
			out[i] = threatqsim.SeedIndicator{Type: "MD5", Value: fmt.Sprintf("%032x", h)}
		case 1:
			out[i] = threatqsim.SeedIndicator{Type: "SHA-256", Value: fmt.Sprintf("%064x", h)}
		case 2:
			out[i] = threatqsim.SeedIndicator{Type: "URL", Value: fmt.Sprintf("https://%s-%d.example.com/login", prefix, i)}
		default:
			out[i] = threatqsim.SeedIndicator{Type: "FQDN", Value: fmt.Sprintf("%s-%d.phish.example.net", prefix, i)}
		}
	}
	return out
}

// fnv is FNV-1a of prefix and i: distinct hash values for distinct pairs.
func fnv(prefix string, i int) uint64 {
	h := uint64(14695981039346656037)
	for _, c := range prefix {
		h = (h ^ uint64(c)) * 1099511628211
	}
	return (h ^ uint64(i)) * 1099511628211
}

var triageType = map[string]string{"MD5": "MD5", "SHA-256": "SHA256", "URL": "URL", "FQDN": "Hostname"}

// Source is tqtriage's default threat source; OtherSource is another
// team's, in the same Triage.
const (
	Source      = "ThreatQ"
	OtherSource = "Triage-UI"
)

// InTriage returns the sample indicators that Triage already holds from
// tqtriage's own source, as an earlier run would have left them: the first
// two of each type, as Triage spells the type. A create answers exists for
// them.
func InTriage() []triagesim.Indicator {
	var out []triagesim.Indicator
	for i := 0; i < 8; i++ {
		typ, value := valid(i)
		out = append(out, triagesim.Indicator{ThreatLevel: "Suspicious", ThreatType: triageType[typ], ThreatValue: value, ThreatSource: Source})
	}
	return out
}

// FromOtherSource returns indicators of the same values as the first four
// of InTriage, from another team's source: a Triage that keeps one
// indicator per source holds both, and tqtriage leaves these alone.
func FromOtherSource() []triagesim.Indicator {
	var out []triagesim.Indicator
	for i := 0; i < 4; i++ {
		typ, value := valid(i)
		out = append(out, triagesim.Indicator{ThreatLevel: "Benign", ThreatType: triageType[typ], ThreatValue: value, ThreatSource: OtherSource})
	}
	return out
}
