package httpclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
)

// TransportRetryable reports whether a request that got no answer at all
// (err is what http.Client.Do or reading the body returned) is worth
// another try. By default it is: a refused or reset connection, an answer
// cut off, a timeout of the request itself (http.Client.Timeout, a dial or
// response-header timeout) or a DNS failure may all pass. These will not:
//
//   - the caller's own context ending (see CallerEnded): the caller has
//     stopped waiting, and trying again would only be refused again;
//   - a certificate that failed verification: it will not become trusted
//     by waiting;
//   - TLS spoken to a port that does not speak it (a TLS record-header
//     error, or http.ErrSchemeMismatch when the port answered in plain
//     HTTP): the address is misconfigured;
//   - a request a read-only client refused (ErrReadOnly): sending it would
//     be a bug.
//
// Decoding an answer, or an answer too large, is not a transport failure:
// the clients decide about those themselves.
func TransportRetryable(err error) bool {
	if err == nil || CallerEnded(err) {
		return false
	}
	var (
		verify   *tls.CertificateVerificationError
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		record   tls.RecordHeaderError
	)
	switch {
	case errors.As(err, &verify), errors.As(err, &unknown), errors.As(err, &hostname), errors.As(err, &invalid):
		return false
	case errors.As(err, &record), errors.Is(err, http.ErrSchemeMismatch):
		return false
	case errors.Is(err, ErrReadOnly):
		return false
	}
	return true
}

// CallerEnded reports whether err says that the caller's own context ended:
// context.Canceled, or context.DeadlineExceeded itself somewhere in err's
// chain. A client's own timeout is not the caller's: http.Client.Timeout
// and net's i/o timeouts only match context.DeadlineExceeded (through an Is
// method) and are not it, so errors.Is alone cannot tell the two apart.
func CallerEnded(err error) bool {
	return errors.Is(err, context.Canceled) || holds(err, context.DeadlineExceeded)
}

// holds reports whether target itself, rather than an error that merely
// matches it, is in err's chain.
func holds(err, target error) bool {
	for err != nil {
		if err == target {
			return true
		}
		switch u := err.(type) {
		case interface{ Unwrap() error }:
			err = u.Unwrap()
		case interface{ Unwrap() []error }:
			for _, e := range u.Unwrap() {
				if holds(e, target) {
					return true
				}
			}
			return false
		default:
			return false
		}
	}
	return false
}
