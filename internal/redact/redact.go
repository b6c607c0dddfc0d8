// Package redact hides the user information (a password, a token) that an
// operator may have put in a service's address, before the address goes
// into an error or a log line: https://admin:pw@host/ becomes
// https://***@host/. It works on anything that looks like a URL, a list of
// them (NATS takes one, comma-separated) or text that holds them. Secrets
// keeps the secrets a client read lately, for it to hide in what a server
// says.
package redact

import (
	"regexp"
)

// userinfo matches the user information of a URL in any text: after a
// scheme's //, up to the last @ before the host's end.
var userinfo = regexp.MustCompile(`([A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s,]*@`)

// URL returns s with the user information of every URL in it replaced by
// ***. Text without any is returned as it is.
func URL(s string) string {
	return userinfo.ReplaceAllString(s, "${1}***@")
}
