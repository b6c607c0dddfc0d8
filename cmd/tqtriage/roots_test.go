package main

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// The image is FROM scratch: no system roots. main imports
// golang.org/x/crypto/x509roots/fallback, so that a public CA's chain
// verifies all the same. Nothing public is reachable from the tests, so
// this verifies a real public chain offline, in a process of this binary
// that finds no system roots (as in the image).
func TestPublicChainVerifiesWithoutSystemRoots(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperVerifyPublicChain$", "-test.count=1")
	cmd.Env = append(os.Environ(), "TQTRIAGE_TEST_ROOTS_HELPER=1",
		// Where Go looks for roots on Linux: nowhere with anything in it.
		"SSL_CERT_FILE="+filepath.Join(dir, "none.pem"), "SSL_CERT_DIR="+dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("without system roots, a public chain did not verify: %v\n%s", err, out)
	}
}

func TestHelperVerifyPublicChain(t *testing.T) {
	if os.Getenv("TQTRIAGE_TEST_ROOTS_HELPER") != "1" {
		t.Skip("run by TestPublicChainVerifiesWithoutSystemRoots")
	}
	raw, err := os.ReadFile(filepath.Join("testdata", "public-chain.pem"))
	if err != nil {
		t.Fatal(err)
	}
	var certs []*x509.Certificate
	for b, rest := pem.Decode(raw); b != nil; b, rest = pem.Decode(rest) {
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		t.Fatal(err)
	}
	at := time.Unix(1677615892, 0)
	// Roots nil is what crypto/tls does; SystemCertPool is what
	// internal/httpclient starts from when a CA file is added.
	for name, roots := range map[string]*x509.CertPool{"nil (crypto/tls)": nil, "SystemCertPool": pool} {
		chains, err := certs[0].Verify(x509.VerifyOptions{DNSName: "www.google.com", Intermediates: inter, Roots: roots, CurrentTime: at})
		if err != nil {
			t.Fatalf("roots %s: %v", name, err)
		}
		if got := chains[0][len(chains[0])-1].Subject.CommonName; got != "GTS Root R1" {
			t.Fatalf("roots %s: the chain ends at %q", name, got)
		}
	}
}
