package buildinfo

import (
	"strings"
	"testing"
)

func TestGetNamesEveryFieldAndTheUserAgentCarriesTheVersion(t *testing.T) {
	i := Get()
	if i.Version == "" || i.Commit == "" || i.Date == "" {
		t.Fatalf("Get() = %+v; want every field named", i)
	}
	if ua := UserAgent(); !strings.HasPrefix(ua, "tqtriage/") || !strings.HasSuffix(ua, i.Version) {
		t.Fatalf("UserAgent() = %q", ua)
	}
}
