package mapping

import (
	"net"
	"net/url"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// hostProfile maps an international name to its ASCII (punycode) form the way
// a resolver looks it up (case folded, width mapped, Bidi rule checked). It
// allows the underscore and leading/trailing-hyphen checks are done below:
// real malicious names use underscores in subdomains, and "r3---sn-…"
// style labels are valid DNS.
var hostProfile = idna.New(
	idna.MapForLookup(),
	idna.BidiRule(),
	idna.StrictDomainName(false),
	idna.CheckHyphens(false),
	idna.VerifyDNSLength(true),
)

// normalizeHostname checks that v is a fully qualified host name (no scheme,
// port or path; at least two labels; not an IP address) and returns it in
// lower-case ASCII, international labels as punycode. One trailing root dot
// is dropped.
func normalizeHostname(v string) (string, error) {
	if strings.Contains(v, "://") {
		return "", invalid("", "%q is a URL; an FQDN is a host name only, like mail.example.com", v)
	}
	if i := strings.IndexAny(v, "/?#@: \t"); i >= 0 {
		return "", invalid("", "a host name cannot contain %q (found at character %d)", v[i], i+1)
	}
	v = strings.TrimSuffix(v, ".")
	h, err := checkHost(v)
	if err != nil {
		return "", err
	}
	if !strings.Contains(h, ".") {
		return "", invalid("", "%q is a single label; a fully qualified name has a domain, like host.example.com", v)
	}
	return h, nil
}

// checkHost validates a DNS name of one or more labels and returns its
// lower-case ASCII form.
func checkHost(v string) (string, error) {
	if !utf8.ValidString(v) { // a URL's host may be %-escaped bytes
		return "", invalid("", "the host name is not valid UTF-8 text")
	}
	if net.ParseIP(v) != nil {
		return "", invalid("", "%q is an IP address, not a host name", v)
	}
	if strings.HasPrefix(v, ".") || strings.Contains(v, "..") {
		return "", invalid("", "%q has an empty label (two dots in a row, or a leading dot)", v)
	}
	ascii, err := hostProfile.ToASCII(v)
	if err != nil {
		return "", invalid("", "%q is not a valid host name: %v", v, idnaReason(err))
	}
	ascii = strings.ToLower(ascii)
	labels := strings.Split(ascii, ".")
	if len(ascii) > 253 {
		return "", invalid("", "the host name is %d characters long; DNS allows 253", len(ascii))
	}
	for _, l := range labels {
		switch {
		case l == "":
			return "", invalid("", "%q has an empty label (two dots in a row, or a leading dot)", v)
		case len(l) > 63:
			return "", invalid("", "the label %q is %d characters long; DNS allows 63", l, len(l))
		case l[0] == '-' || l[len(l)-1] == '-':
			return "", invalid("", "the label %q starts or ends with a hyphen", l)
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return "", invalid("", "%q contains %q, which a host name cannot hold", v, c)
			}
		}
	}
	if tld := labels[len(labels)-1]; len(labels) > 1 && strings.Trim(tld, "0123456789") == "" {
		return "", invalid("", "%q ends in a numeric label; a top-level domain has letters", v)
	}
	return ascii, nil
}

func idnaReason(err error) string {
	// idna's messages carry a "idna: " prefix that means nothing to a reader.
	return strings.TrimPrefix(err.Error(), "idna: ")
}

// normalizeURL checks that v is an absolute URL with a scheme and a host and
// returns it with the scheme and host in lower case (the host in punycode).
// Path, query and fragment are kept byte for byte: they are case-sensitive.
func normalizeURL(v string) (string, error) {
	for i, r := range v {
		if r <= 0x20 || r == 0x7f {
			return "", invalid("", "a URL cannot contain spaces or control characters (character %d)", i+1)
		}
	}
	u, err := url.Parse(v)
	if err != nil {
		return "", invalid("", "not a URL: %v", urlReason(err))
	}
	if u.Scheme == "" {
		return "", invalid("", "%q has no scheme; a URL starts like http:// or https://", v)
	}
	if s := strings.ToLower(u.Scheme); s == "hxxp" || s == "hxxps" || s == "fxp" {
		return "", invalid("", "%q is defanged (%s://); send the live URL", v, u.Scheme)
	}
	if u.Opaque != "" || u.Host == "" {
		return "", invalid("", "%q has no host; a URL looks like %s://host/path", v, u.Scheme)
	}
	host := u.Hostname()
	port := u.Port()
	if strings.HasSuffix(u.Host, ":") {
		return "", invalid("", "%q has an empty port", v)
	}
	var normHost string
	switch {
	case strings.HasPrefix(u.Host, "["):
		ip := net.ParseIP(host)
		if ip == nil || ip.To4() != nil && !strings.Contains(host, ":") {
			return "", invalid("", "%q has a bracketed host that is not an IPv6 address", v)
		}
		normHost = "[" + strings.ToLower(host) + "]"
	case strings.Contains(host, ":"):
		return "", invalid("", "%q has an IPv6 host without brackets", v)
	case net.ParseIP(host) != nil:
		normHost = host // an IPv4 literal is a fine URL host
	default:
		// A single-label host (http://intranet/) is still a URL.
		if normHost, err = checkHost(strings.TrimSuffix(host, ".")); err != nil {
			return "", invalid("", "the URL's host: %s", err.(*InvalidError).Reason)
		}
	}
	hostPort := normHost
	if port != "" {
		hostPort += ":" + port
	}
	// Rebuild only the authority: url.URL.String would re-escape the path
	// and could change what the user sent.
	scheme := strings.ToLower(u.Scheme)
	rest := v[len(u.Scheme)+len("://"):]
	if !strings.HasPrefix(v[len(u.Scheme):], "://") {
		return "", invalid("", "%q has no host; a URL looks like %s://host/path", v, scheme)
	}
	// Authority ends at the first '/', '?' or '#'.
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	userinfo := ""
	if at := strings.LastIndex(rest[:end], "@"); at >= 0 {
		userinfo = rest[:at+1]
	}
	return scheme + "://" + userinfo + hostPort + rest[end:], nil
}

func urlReason(err error) string {
	var ue *url.Error
	if e, ok := err.(*url.Error); ok {
		ue = e
		return ue.Err.Error()
	}
	return err.Error()
}
