// Package wire holds the JSON:API documents Triage sends, as the client
// decodes them. The client and the simulator's tests share them, so that
// the simulator's answers and the recorded fixtures are held to exactly
// what the client reads; they are internal because no caller of the client
// needs them. What the client sends stays in package triage.
package wire

import (
	"fmt"
	"strings"
	"time"
)

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

// Indicator is a threat indicator as the client returns it. It has exactly
// the fields of triage.Indicator, which is converted from it: a field added
// to one must be added to the other, or the conversion stops compiling.
type Indicator struct {
	ID           string
	ThreatLevel  string
	ThreatType   string
	ThreatValue  string
	ThreatSource string
	CreatedAt    time.Time
	UpdatedAt    time.Time
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

// ErrorBody covers both error shapes seen from Triage: JSON:API
// (jsonapi-resources) errors and Doorkeeper's OAuth errors.
type ErrorBody struct {
	Errors           []ErrorObject `json:"errors"`
	Error            string        `json:"error"`
	ErrorDescription string        `json:"error_description"`
}

// ErrorObject is one JSON:API error object as jsonapi-resources writes it.
type ErrorObject struct {
	Title  string `json:"title"`
	Detail string `json:"detail"`
	Code   string `json:"code"`
	Status string `json:"status"`
	Source struct {
		Pointer string `json:"pointer"`
	} `json:"source"`
}

// Message is the object's text for a person: its detail ("threat_value -
// can't be blank"), led by its title when the detail does not repeat it.
func (o ErrorObject) Message() string {
	switch {
	case o.Detail == "":
		return o.Title
	case o.Title == "" || strings.Contains(o.Detail, o.Title):
		return o.Detail
	default:
		return o.Title + ": " + o.Detail
	}
}
