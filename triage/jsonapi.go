package triage

import (
	"fmt"
	"time"
)

// The JSON:API wire types. They are exported so that the simulator's tests
// (and anyone checking a captured body) decode with exactly what the client
// decodes with.

// ResourceType is the JSON:API type of a threat indicator.
const ResourceType = "threat_indicators"

// Document is a single-resource answer: create, update, get.
type Document struct {
	Data Resource `json:"data"`
}

// ListDocument is a page of a collection, with the paginator's links.
type ListDocument struct {
	Data  []Resource `json:"data"`
	Links Links      `json:"links"`
}

// Links are a page's top-level links. Next is empty on the last page.
type Links struct {
	Self  string `json:"self,omitempty"`
	First string `json:"first,omitempty"`
	Prev  string `json:"prev,omitempty"`
	Next  string `json:"next,omitempty"`
	Last  string `json:"last,omitempty"`
}

// Resource is one threat indicator as Triage sends it. Relationships are
// not decoded: nothing here uses them.
type Resource struct {
	ID         string     `json:"id"`
	Type       string     `json:"type"`
	Links      Links      `json:"links"`
	Attributes Attributes `json:"attributes"`
}

// Attributes of a threat indicator. Timestamps stay strings here so that a
// null or empty one decodes; Indicator parses them.
type Attributes struct {
	ThreatLevel  string `json:"threat_level"`
	ThreatType   string `json:"threat_type"`
	ThreatValue  string `json:"threat_value"`
	ThreatSource string `json:"threat_source"`
	CreatedAt    string `json:"created_at"`
	UpdatedAt    string `json:"updated_at"`
}

// Indicator converts the resource. It fails on a resource of another type
// or without an id, or on a timestamp that is not RFC 3339.
func (r Resource) Indicator() (*Indicator, error) {
	if r.Type != ResourceType {
		return nil, fmt.Errorf("resource type %q, want %q", r.Type, ResourceType)
	}
	if r.ID == "" {
		return nil, fmt.Errorf("threat indicator without an id")
	}
	in := &Indicator{
		ID:           r.ID,
		ThreatLevel:  r.Attributes.ThreatLevel,
		ThreatType:   r.Attributes.ThreatType,
		ThreatValue:  r.Attributes.ThreatValue,
		ThreatSource: r.Attributes.ThreatSource,
	}
	var err error
	if in.CreatedAt, err = parseTimestamp(r.Attributes.CreatedAt); err != nil {
		return nil, fmt.Errorf("threat indicator %s: created_at: %w", r.ID, err)
	}
	if in.UpdatedAt, err = parseTimestamp(r.Attributes.UpdatedAt); err != nil {
		return nil, fmt.Errorf("threat indicator %s: updated_at: %w", r.ID, err)
	}
	return in, nil
}

func parseTimestamp(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	return time.Parse(time.RFC3339Nano, s)
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
