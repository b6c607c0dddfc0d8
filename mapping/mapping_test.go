package mapping

import (
	"errors"
	"strings"
	"testing"
)

func TestMap(t *testing.T) {
	md5 := "d41d8cd98f00b204e9800998ecf8427e"
	sha := "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	cases := []struct {
		name, typ, value string
		wantType         string
		want             string // normalised value; empty when an error is expected
		wantErr          string // substring of the reason
	}{
		{"md5", "MD5", md5, "MD5", md5, ""},
		{"md5 upper and padded", "MD5", "  " + strings.ToUpper(md5) + "\n", "MD5", md5, ""},
		{"md5 short", "MD5", md5[:31], "", "", "32 hexadecimal digits; this value has 31"},
		{"md5 non-hex", "MD5", "g" + md5[1:], "", "", "character 1 ('g')"},
		{"md5 is a sha256", "MD5", sha, "", "", "has 64 characters"},
		{"sha256", "SHA-256", strings.ToUpper(sha), "SHA256", sha, ""},
		{"sha256 long", "SHA-256", sha + "0", "", "", "64 hexadecimal digits"},
		{"sha256 with space inside", "SHA-256", sha[:10] + " " + sha[11:], "", "", "not a hex digit"},
		{"url", "URL", "https://Example.COM/Path?Q=1#Frag", "URL", "https://example.com/Path?Q=1#Frag", ""},
		{"url scheme case", "URL", "HTTP://example.com", "URL", "http://example.com", ""},
		{"url port and user", "URL", "http://user@EXAMPLE.com:8080/a", "URL", "http://user@example.com:8080/a", ""},
		{"url idn", "URL", "http://bücher.example/x", "URL", "http://xn--bcher-kva.example/x", ""},
		{"url ip host", "URL", "http://192.0.2.10/login.php", "URL", "http://192.0.2.10/login.php", ""},
		{"url ipv6 host", "URL", "http://[2001:DB8::1]:81/", "URL", "http://[2001:db8::1]:81/", ""},
		{"url single label host", "URL", "http://intranet/x", "URL", "http://intranet/x", ""},
		{"url keeps escapes", "URL", "http://a.example/%7Euser/a%20b", "URL", "http://a.example/%7Euser/a%20b", ""},
		{"url no scheme", "URL", "example.com/path", "", "", "no scheme"},
		{"url no host", "URL", "http:///path", "", "", "no host"},
		{"url opaque", "URL", "mailto:a@example.com", "", "", "no host"},
		{"url space", "URL", "http://example.com/a b", "", "", "spaces or control"},
		{"url defanged", "URL", "hxxp://evil.example/", "", "", "defanged"},
		{"url bad host", "URL", "http://exa mple.com/", "", "", "spaces"},
		{"url bad label", "URL", "http://-bad.example/", "", "", "hyphen"},
		{"fqdn", "FQDN", "Mail.Example.COM.", "Hostname", "mail.example.com", ""},
		{"fqdn idn", "FQDN", "BÜCHER.example", "Hostname", "xn--bcher-kva.example", ""},
		{"fqdn punycode kept", "FQDN", "xn--bcher-kva.example", "Hostname", "xn--bcher-kva.example", ""},
		{"fqdn underscore", "FQDN", "_dmarc.example.com", "Hostname", "_dmarc.example.com", ""},
		{"fqdn triple hyphen", "FQDN", "r3---sn-abc.example.net", "Hostname", "r3---sn-abc.example.net", ""},
		{"fqdn single label", "FQDN", "localhost", "", "", "single label"},
		{"fqdn ip", "FQDN", "192.0.2.1", "", "", "IP address"},
		{"fqdn url", "FQDN", "http://example.com", "", "", "is a URL"},
		{"fqdn with port", "FQDN", "example.com:443", "", "", "cannot contain"},
		{"fqdn empty label", "FQDN", "a..example.com", "", "", "empty label"},
		{"fqdn long label", "FQDN", strings.Repeat("a", 64) + ".com", "", "", "not a valid host name"},
		{"fqdn leading hyphen", "FQDN", "-a.example.com", "", "", "hyphen"},
		{"fqdn numeric tld", "FQDN", "host.123", "", "", "numeric label"},
		{"fqdn bad char", "FQDN", "a*b.example.com", "", "", "cannot hold"},
		{"unsupported", "IP Address", "192.0.2.1", "", "", `unsupported type "IP Address"`},
		{"unsupported sha1", "SHA-1", "da39a3ee5e6b4b0d3255bfef95601890afd80709", "", "", "only MD5, SHA-256, URL and FQDN"},
		{"type case matters", "sha-256", sha, "", "", "unsupported type"},
		{"no type", "", md5, "", "", "no type"},
		{"empty value", "URL", "   ", "", "", "empty"},
		{"too long", "URL", "http://a.example/" + strings.Repeat("a", 9000), "", "", "at most 8192"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Map(c.typ, c.value)
			if c.wantErr != "" {
				var ie *InvalidError
				if !errors.As(err, &ie) {
					t.Fatalf("Map(%q, %q) = %+v, %v; want an *InvalidError", c.typ, c.value, got, err)
				}
				if !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("Map(%q, %q) error %q; want it to mention %q", c.typ, c.value, err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Map(%q, %q): %v", c.typ, c.value, err)
			}
			if got.ThreatType != c.wantType || got.ThreatValue != c.want {
				t.Fatalf("Map(%q, %q) = %+v; want {%s %s}", c.typ, c.value, got, c.wantType, c.want)
			}
		})
	}
}

func TestParseThreatLevel(t *testing.T) {
	for in, want := range map[string]string{"malicious": "Malicious", " Suspicious ": "Suspicious", "BENIGN": "Benign"} {
		if got, err := ParseThreatLevel(in); err != nil || got != want {
			t.Errorf("ParseThreatLevel(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ParseThreatLevel("critical"); err == nil || !strings.Contains(err.Error(), "Malicious, Suspicious or Benign") {
		t.Errorf("ParseThreatLevel(critical) err = %v; want the allowed levels named", err)
	}
}

func TestAttributes(t *testing.T) {
	c := CreateAttributes("325", "Malicious", "ThreatQ")
	if len(c) != 3 || c[0] != (Attribute{"ID", "325"}) || c[1] != (Attribute{"Threat Level", "Malicious"}) || c[2] != (Attribute{"Threat Source", "ThreatQ"}) {
		t.Fatalf("CreateAttributes = %v", c)
	}
	u := UpdateAttributes("Benign", "ThreatQ")
	if len(u) != 2 || u[0] != (Attribute{"Threat Level", "Benign"}) || u[1] != (Attribute{"Threat Source", "ThreatQ"}) {
		t.Fatalf("UpdateAttributes = %v", u)
	}
}

// FuzzNormalizeValue checks the validators' invariants on any input: no
// panic; an accepted value is trimmed, long enough, bounded, free of
// control characters, and already normal (normalising it again changes
// nothing); a refused one has a reason.
func FuzzNormalizeValue(f *testing.F) {
	for _, s := range []string{
		"d41d8cd98f00b204e9800998ecf8427e", "https://Example.COM/a?b#c", "http://[::1]:80/", "bücher.example",
		"xn--bcher-kva.example", "a..b", "http://user@host.example:1/", "_x.example.com.", " MAIL.EXAMPLE.COM ",
		"http://%41.example/", "http://a.example:/", "http://ß.example", "\u200d.example",
	} {
		for _, typ := range []string{TriageMD5, TriageSHA256, TriageURL, TriageHostname} {
			f.Add(typ, s)
		}
	}
	f.Fuzz(func(t *testing.T, typ, value string) {
		switch typ {
		case TriageMD5, TriageSHA256, TriageURL, TriageHostname:
		default:
			typ = TriageURL
		}
		got, err := NormalizeValue(typ, value)
		if err != nil {
			var ie *InvalidError
			if !errors.As(err, &ie) || ie.Reason == "" {
				t.Fatalf("NormalizeValue(%q, %q): error %v without a reason", typ, value, err)
			}
			return
		}
		if got != strings.TrimSpace(got) || len(got) < minValueLen || len(got) > maxValueLen+len("[]") {
			t.Fatalf("NormalizeValue(%q, %q) = %q: not trimmed or out of bounds", typ, value, got)
		}
		for _, r := range got {
			if r < 0x20 || r == 0x7f {
				t.Fatalf("NormalizeValue(%q, %q) = %q: control character", typ, value, got)
			}
		}
		again, err := NormalizeValue(typ, got)
		if err != nil || again != got {
			t.Fatalf("NormalizeValue is not idempotent for %s: %q -> %q -> %q, %v", typ, value, got, again, err)
		}
		if typ != TriageURL && got != strings.ToLower(got) {
			t.Fatalf("NormalizeValue(%q, %q) = %q: not lower case", typ, value, got)
		}
	})
}
