package triage

import "github.com/tqtriage/tqtriage/triage/internal/wire"

// indicatorOf converts a decoded resource (see wire.Resource.Indicator).
func indicatorOf(r wire.Resource) (*Indicator, error) {
	in, err := r.Indicator()
	if err != nil {
		return nil, err
	}
	return (*Indicator)(in), nil
}

// What the client sends. Attributes are all strings; omitempty keeps an
// update to the two fields Triage allows there.
type requestDocument struct {
	Data requestResource `json:"data"`
}

type requestResource struct {
	ID         string            `json:"id,omitempty"`
	Type       string            `json:"type"`
	Attributes requestAttributes `json:"attributes"`
}

type requestAttributes struct {
	ThreatLevel  string `json:"threat_level,omitempty"`
	ThreatType   string `json:"threat_type,omitempty"`
	ThreatValue  string `json:"threat_value,omitempty"`
	ThreatSource string `json:"threat_source,omitempty"`
}
