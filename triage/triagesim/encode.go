package triagesim

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
)

// The documents the simulator writes, shaped like the fixtures in
// triage/testdata/fixtures (jsonapi-resources output).

// timeFormat is how Triage writes timestamps: UTC, milliseconds, Z.
const timeFormat = "2006-01-02T15:04:05.000Z"

type linkPair struct {
	Self    string `json:"self"`
	Related string `json:"related"`
}

type relationship struct {
	Links linkPair `json:"links"`
}

type resourceRef struct {
	Type string `json:"type"`
	ID   string `json:"id"`
}

type ownerRelationship struct {
	Links linkPair    `json:"links"`
	Data  resourceRef `json:"data"`
}

type relationships struct {
	Owner    ownerRelationship `json:"owner"`
	Reports  relationship      `json:"reports"`
	Comments relationship      `json:"comments"`
}

type selfLink struct {
	Self string `json:"self"`
}

type attributes struct {
	ThreatLevel  string `json:"threat_level"`
	ThreatType   string `json:"threat_type"`
	ThreatValue  string `json:"threat_value"`
	ThreatSource string `json:"threat_source"`
	CreatedAt    string `json:"created_at"`
	UpdatedAt    string `json:"updated_at"`
}

type resource struct {
	ID            string        `json:"id"`
	Type          string        `json:"type"`
	Links         selfLink      `json:"links"`
	Attributes    any           `json:"attributes"`
	Relationships relationships `json:"relationships"`
}

type document struct {
	Data resource `json:"data"`
}

type pageLinks struct {
	First string `json:"first"`
	Prev  string `json:"prev,omitempty"`
	Next  string `json:"next,omitempty"`
	Last  string `json:"last"`
}

type listDocument struct {
	Data  []resource `json:"data"`
	Links pageLinks  `json:"links"`
}

// The owner of what the API creates: the API application behind the
// simulator's one set of credentials.
var owner = resourceRef{Type: "api_applications", ID: "1"}

const resourceType = "threat_indicators"

// toResource renders in; fields, when not nil, is a sparse fieldset.
func toResource(base string, in Indicator, fields map[string]bool) resource {
	self := base + apiPrefix + "/threat_indicators/" + in.ID
	attrs := attributes{
		ThreatLevel: in.ThreatLevel, ThreatType: in.ThreatType, ThreatValue: in.ThreatValue,
		ThreatSource: in.ThreatSource,
		CreatedAt:    in.CreatedAt.UTC().Format(timeFormat),
		UpdatedAt:    in.UpdatedAt.UTC().Format(timeFormat),
	}
	r := resource{
		ID: in.ID, Type: resourceType, Links: selfLink{self}, Attributes: attrs,
		Relationships: relationships{
			Owner:    ownerRelationship{Links: relLinks(self, "owner"), Data: owner},
			Reports:  relationship{relLinks(self, "reports")},
			Comments: relationship{relLinks(self, "comments")},
		},
	}
	if fields != nil {
		sparse := make(map[string]string, len(fields))
		for name := range fields {
			sparse[name] = attrs.get(name)
		}
		r.Attributes = sparse
	}
	return r
}

func (a attributes) get(name string) string {
	switch name {
	case "threat_level":
		return a.ThreatLevel
	case "threat_type":
		return a.ThreatType
	case "threat_value":
		return a.ThreatValue
	case "threat_source":
		return a.ThreatSource
	case "created_at":
		return a.CreatedAt
	case "updated_at":
		return a.UpdatedAt
	}
	return ""
}

func relLinks(self, name string) linkPair {
	return linkPair{Self: self + "/relationships/" + name, Related: self + "/" + name}
}

// pageLink is a paginator link as jsonapi-resources writes it: the request's
// filters, sort and fields kept, keys sorted and escaped (page%5Bnumber%5D).
func pageLink(base string, params url.Values, number, size int) string {
	params.Set("page[number]", strconv.Itoa(number))
	params.Set("page[size]", strconv.Itoa(size))
	return base + apiPrefix + "/threat_indicators?" + params.Encode()
}

// errorObject is a jsonapi-resources error.
type errorObject struct {
	Title  string       `json:"title"`
	Detail string       `json:"detail"`
	Code   string       `json:"code"`
	Source *errorSource `json:"source,omitempty"`
	Status string       `json:"status"`
}

type errorSource struct {
	Pointer string `json:"pointer"`
}

type errorDocument struct {
	Errors []errorObject `json:"errors"`
}

func newError(status int, code, title, detail string) errorObject {
	return errorObject{Title: title, Detail: detail, Code: code, Status: strconv.Itoa(status)}
}

func validationErrors(errs []fieldError) []errorObject {
	out := make([]errorObject, len(errs))
	for i, e := range errs {
		out[i] = errorObject{
			Title: e.msg, Detail: e.attr + " - " + e.msg, Code: "100",
			Source: &errorSource{Pointer: "/data/attributes/" + e.attr},
			Status: "422",
		}
	}
	return out
}

// tokenResponse is Doorkeeper's answer to a grant.
type tokenResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int64  `json:"expires_in"`
	CreatedAt   int64  `json:"created_at"`
}

// oauthError is Doorkeeper's answer to a refused grant.
type oauthError struct {
	Error            string `json:"error"`
	ErrorDescription string `json:"error_description"`
}

func writeJSON(w http.ResponseWriter, status int, contentType string, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		// Only the simulator's own types come here; they always encode.
		panic("triagesim: encode response: " + err.Error())
	}
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
