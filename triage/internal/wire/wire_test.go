package wire

import (
	"testing"
	"time"
)

func TestResourceIndicator(t *testing.T) {
	r := Resource{ID: "7", Type: ResourceType, Attributes: Attributes{
		ThreatLevel: "Benign", CreatedAt: "2021-05-14T07:24:48.886Z", UpdatedAt: "",
	}}
	in, err := r.Indicator()
	if err != nil || in.CreatedAt != time.Date(2021, 5, 14, 7, 24, 48, 886e6, time.UTC) || !in.UpdatedAt.IsZero() {
		t.Fatalf("Indicator = %+v, %v", in, err)
	}
	for _, bad := range []Resource{
		{ID: "7", Type: "reports"},
		{Type: ResourceType},
		{ID: "7", Type: ResourceType, Attributes: Attributes{UpdatedAt: "yesterday"}},
	} {
		if _, err := bad.Indicator(); err == nil {
			t.Errorf("%+v: want an error", bad)
		}
	}
}
