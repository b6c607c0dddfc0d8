package httpclient

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestTransportRetryable classifies the errors of real failing requests,
// each made the way the clients make them (Do, then read the body).
func TestTransportRetryable(t *testing.T) {
	slow := quietServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(10 * time.Second):
		case <-r.Context().Done():
		}
	}), false)
	slowBody := quietServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("{"))
		w.(http.Flusher).Flush()
		select {
		case <-time.After(10 * time.Second):
		case <-r.Context().Done():
		}
	}), false)
	hangUp := quietServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, _, _ := w.(http.Hijacker).Hijack()
		_ = conn.Close()
	}), false)
	cutBody := quietServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, buf, _ := w.(http.Hijacker).Hijack()
		_, _ = buf.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"partial\":")
		_ = buf.Flush()
		_ = conn.Close()
	}), false)
	tlsSrv := quietServer(t, http.NotFoundHandler(), true)
	plain := quietServer(t, http.NotFoundHandler(), false)

	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusedURL := "http://" + closed.Addr().String()
	_ = closed.Close()

	// A port that speaks neither TLS nor HTTP (an SSH banner, say).
	banner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = banner.Close() })
	go func() {
		for {
			c, err := banner.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("SSH-2.0-OpenSSH_9.6\r\n"))
			_ = c.Close()
		}
	}()

	expired := expiredServer(t)

	plainClient := &http.Client{}
	timeoutClient := &http.Client{Timeout: 50 * time.Millisecond}
	trusting := func(srv *httptest.Server, serverName string) *http.Client {
		pool := x509.NewCertPool()
		pool.AddCert(srv.Certificate())
		return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: serverName}}}
	}
	headerTimeout := &http.Client{Transport: &http.Transport{ResponseHeaderTimeout: 50 * time.Millisecond}}
	dialTimeout := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{Timeout: time.Nanosecond}).DialContext}}
	noDNS := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{Resolver: &net.Resolver{
		PreferGo: true,
		Dial: func(context.Context, string, string) (net.Conn, error) {
			return nil, errors.New("no name server reachable")
		},
	}}).DialContext}}

	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	bg := context.Background()

	cases := []struct {
		name      string
		do        func() error
		shows     string // in the error text: the case failed as meant
		retryable bool
		caller    bool // CallerEnded
	}{
		{"connection refused", func() error { return get(bg, plainClient, refusedURL) }, "connect: connection refused", true, false},
		{"connection closed before an answer", func() error { return get(bg, plainClient, hangUp.URL) }, ": EOF", true, false},
		{"answer cut off mid-body", func() error { return get(bg, plainClient, cutBody.URL) }, "unexpected EOF", true, false},
		{"client timeout awaiting headers", func() error { return get(bg, timeoutClient, slow.URL) }, "Client.Timeout exceeded while awaiting headers", true, false},
		{"client timeout reading the body", func() error { return get(bg, timeoutClient, slowBody.URL) }, "Client.Timeout or context cancellation while reading body", true, false},
		{"response header timeout", func() error { return get(bg, headerTimeout, slow.URL) }, "timeout awaiting response headers", true, false},
		{"dial timeout", func() error { return get(bg, dialTimeout, slow.URL) }, "i/o timeout", true, false},
		{"name server unreachable", func() error { return get(bg, noDNS, "http://triage.example.test/") }, "no name server reachable", true, false},
		{"caller cancelled", func() error { return get(cancelled, plainClient, slow.URL) }, "context canceled", false, true},
		{"caller deadline awaiting headers", func() error {
			ctx, cancel := context.WithTimeout(bg, 50*time.Millisecond)
			defer cancel()
			return get(ctx, &http.Client{Timeout: time.Minute}, slow.URL)
		}, "context deadline exceeded", false, true},
		{"caller deadline reading the body", func() error {
			ctx, cancel := context.WithTimeout(bg, 50*time.Millisecond)
			defer cancel()
			return get(ctx, plainClient, slowBody.URL)
		}, "context deadline exceeded", false, true},
		{"caller deadline joined to the last error", func() error {
			ctx, cancel := context.WithTimeout(bg, 50*time.Millisecond)
			defer cancel()
			<-ctx.Done()
			return errors.Join(get(bg, plainClient, refusedURL), ctx.Err())
		}, "connection refused\ncontext deadline exceeded", false, true},
		{"unknown certificate authority", func() error { return get(bg, plainClient, tlsSrv.URL) }, "certificate signed by unknown authority", false, false},
		{"certificate for another host", func() error { return get(bg, trusting(tlsSrv, "elsewhere.test"), tlsSrv.URL) }, "not elsewhere.test", false, false},
		{"expired certificate", func() error { return get(bg, trusting(expired, ""), expired.URL) }, "certificate has expired", false, false},
		{"https to a plain HTTP server", func() error { return get(bg, plainClient, "https://"+plain.Listener.Addr().String()) }, "server gave HTTP response to HTTPS client", false, false},
		{"https to a port that speaks neither", func() error { return get(bg, plainClient, "https://"+banner.Addr().String()) }, "does not look like a TLS handshake", false, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.do()
			if err == nil {
				t.Fatal("the request succeeded; the case needs a failure")
			}
			if !strings.Contains(err.Error(), tc.shows) {
				t.Fatalf("error %q does not show %q: the case did not fail as meant", err, tc.shows)
			}
			if got := TransportRetryable(err); got != tc.retryable {
				t.Errorf("TransportRetryable(%v) = %v, want %v", err, got, tc.retryable)
			}
			if got := TransportRetryable(fmt.Errorf("create indicator: %w", err)); got != tc.retryable {
				t.Errorf("wrapped: TransportRetryable = %v, want %v", got, tc.retryable)
			}
			if got := CallerEnded(err); got != tc.caller {
				t.Errorf("CallerEnded(%v) = %v, want %v", err, got, tc.caller)
			}
		})
	}
	if TransportRetryable(nil) || CallerEnded(nil) {
		t.Error("a nil error is neither retryable nor the caller's end")
	}
}

// TestClientTimeoutMatchesDeadlineExceeded pins what CallerEnded relies
// on: http.Client's timeout matches context.DeadlineExceeded (so errors.Is
// cannot tell it from the caller's deadline) without holding it.
func TestClientTimeoutMatchesDeadlineExceeded(t *testing.T) {
	srv := quietServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }), false)
	err := get(context.Background(), &http.Client{Timeout: 20 * time.Millisecond}, srv.URL)
	var timeout interface{ Timeout() bool }
	if !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &timeout) || !timeout.Timeout() {
		t.Fatalf("client timeout %v: want it to match context.DeadlineExceeded and say Timeout()", err)
	}
	if holds(err, context.DeadlineExceeded) {
		t.Fatalf("client timeout %v holds context.DeadlineExceeded itself", err)
	}
}

// get makes a request and reads its body, the two places a transport
// error comes from.
func get(ctx context.Context, c *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.ReadAll(resp.Body)
	return err
}

// quietServer starts a test server that does not log the failed
// handshakes and hijacked connections these tests cause on purpose.
func quietServer(t *testing.T, h http.Handler, useTLS bool) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	if useTLS {
		srv.StartTLS()
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	return srv
}

// expiredServer serves TLS with a self-signed certificate that expired
// yesterday; Certificate() returns it, so that a client can trust it.
func expiredServer(t *testing.T) *httptest.Server {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "expired test server"},
		NotBefore:             time.Now().Add(-48 * time.Hour),
		NotAfter:              time.Now().Add(-24 * time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.NotFoundHandler())
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}
