package redact

import "testing"

func TestURLHidesUserInformation(t *testing.T) {
	for in, want := range map[string]string{
		"https://admin:pw@triage.example.com/":                "https://***@triage.example.com/",
		"https://triage.example.com/api":                      "https://triage.example.com/api",
		"nats://u:p@a:4222,nats://b:4222,tls://x:y@c:4222":    "nats://***@a:4222,nats://b:4222,tls://***@c:4222",
		`triage: base URL "https://a:s3cret@h/x?y": must not`: `triage: base URL "https://***@h/x?y": must not`,
		"ftp://token@host":                                    "ftp://***@host",
		"https://host/path@not-userinfo":                      "https://host/path@not-userinfo",
		"mail me at someone@example.com":                      "mail me at someone@example.com",
		"https://us%40er:p%3Ass@host":                         "https://***@host",
		"not a url: admin:pw@host":                            "not a url: admin:pw@host",
	} {
		if got := URL(in); got != want {
			t.Errorf("URL(%q) = %q; want %q", in, got, want)
		}
	}
}
