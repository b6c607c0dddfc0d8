// Package mapping turns a ThreatQ indicator into what Cofense Triage accepts,
// and a Triage answer into the attributes written back to ThreatQ.
//
// It owns the rules of docs/flow.md, "What each action does": the four supported
// types, the per-type validation and normalisation of values (trim, case,
// punycode), the threat levels, and the names of the enrichment attributes.
// It calls nothing and keeps no state: every function is pure.
package mapping

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/tqtriage/tqtriage/message"
)

// Triage threat types (case-sensitive in the Triage API).
const (
	TriageMD5      = "MD5"
	TriageSHA256   = "SHA256"
	TriageURL      = "URL"
	TriageHostname = "Hostname"
)

// ThreatQ indicator type names this project sends; ThreatQ type ids differ
// per instance, so types are always matched by name.
const (
	ThreatQMD5    = "MD5"
	ThreatQSHA256 = "SHA-256"
	ThreatQURL    = "URL"
	ThreatQFQDN   = "FQDN"
)

// Threat levels Triage accepts.
const (
	LevelMalicious  = "Malicious"
	LevelSuspicious = "Suspicious"
	LevelBenign     = "Benign"
)

// Names of the attributes written back onto ThreatQ indicators.
const (
	AttrID           = "ID"
	AttrThreatLevel  = "Threat Level"
	AttrThreatSource = "Threat Source"
)

// Written reports whether name is one of the attributes tqtriage writes.
func Written(name string) bool {
	return name == AttrID || name == AttrThreatLevel || name == AttrThreatSource
}

// Triage refuses shorter threat values; a longer value than maxValueLen is
// refused here, as no indicator of these types is that long in practice and
// a message or request body must stay bounded.
const (
	minValueLen = 3
	maxValueLen = message.MaxValueBytes
)

// InvalidError says why a value cannot be sent to Triage. Its text is meant
// for the person reading the result in ThreatQ or in a report.
type InvalidError struct {
	Type   string // the ThreatQ type as given
	Reason string
}

func (e *InvalidError) Error() string {
	if e.Type == "" {
		return e.Reason
	}
	return e.Type + ": " + e.Reason
}

func invalid(typ, format string, args ...any) error {
	return &InvalidError{Type: typ, Reason: fmt.Sprintf(format, args...)}
}

// TriageType returns the Triage threat type for a ThreatQ type name. The name
// is matched exactly after trimming; ThreatQ spells its types one way.
func TriageType(threatqType string) (string, error) {
	switch strings.TrimSpace(threatqType) {
	case ThreatQMD5:
		return TriageMD5, nil
	case ThreatQSHA256:
		return TriageSHA256, nil
	case ThreatQURL:
		return TriageURL, nil
	case ThreatQFQDN:
		return TriageHostname, nil
	case "":
		return "", invalid("", "the indicator has no type")
	default:
		return "", invalid(threatqType, "unsupported type %q: only MD5, SHA-256, URL and FQDN are sent to Triage", threatqType)
	}
}

// Indicator is a value ready for Triage.
type Indicator struct {
	ThreatType  string // Triage type
	ThreatValue string // normalised value
}

// Map validates a ThreatQ indicator's type and value and returns the Triage
// type and the normalised value, or an *InvalidError.
func Map(threatqType, value string) (Indicator, error) {
	tt, err := TriageType(threatqType)
	if err != nil {
		return Indicator{}, err
	}
	v, err := NormalizeValue(tt, value)
	if err != nil {
		return Indicator{}, &InvalidError{Type: strings.TrimSpace(threatqType), Reason: err.(*InvalidError).Reason}
	}
	return Indicator{ThreatType: tt, ThreatValue: v}, nil
}

// NormalizeValue validates value for a Triage threat type and returns its
// normal form: trimmed; hashes in lower case; host names in lower case and
// punycode; URLs with a lower-case scheme and host.
func NormalizeValue(triageType, value string) (string, error) {
	v := strings.TrimSpace(value)
	if v == "" {
		return "", invalid("", "the value is empty")
	}
	if !utf8.ValidString(v) {
		return "", invalid("", "the value is not valid UTF-8 text")
	}
	if len(v) > maxValueLen {
		return "", invalid("", "the value is %d bytes long; at most %d are accepted", len(v), maxValueLen)
	}
	var (
		out string
		err error
	)
	switch triageType {
	case TriageMD5:
		out, err = normalizeHash(v, 32, "an MD5")
	case TriageSHA256:
		out, err = normalizeHash(v, 64, "a SHA-256")
	case TriageURL:
		out, err = normalizeURL(v)
	case TriageHostname:
		out, err = normalizeHostname(v)
	default:
		return "", invalid("", "unsupported Triage type %q", triageType)
	}
	if err != nil {
		return "", err
	}
	if len(out) < minValueLen {
		return "", invalid("", "the value %q is shorter than the %d characters Triage requires", out, minValueLen)
	}
	return out, nil
}

func normalizeHash(v string, size int, what string) (string, error) {
	if len(v) != size {
		return "", invalid("", "%s hash is %d hexadecimal digits; this value has %d characters", what, size, len([]rune(v)))
	}
	for i := 0; i < len(v); i++ {
		if !isHex(v[i]) {
			return "", invalid("", "%s hash is hexadecimal; character %d (%q) is not a hex digit", what, i+1, firstRune(v[i:]))
		}
	}
	return strings.ToLower(v), nil
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func firstRune(s string) rune {
	for _, r := range s {
		return r
	}
	return 0
}

// ParseThreatLevel returns the canonical spelling of a threat level, given
// in any case.
func ParseThreatLevel(s string) (string, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "malicious":
		return LevelMalicious, nil
	case "suspicious":
		return LevelSuspicious, nil
	case "benign":
		return LevelBenign, nil
	}
	return "", fmt.Errorf("threat level %q: want Malicious, Suspicious or Benign", s)
}

// Attribute is one name/value written onto a ThreatQ indicator.
type Attribute struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// CreateAttributes is the enrichment of a create (or of an indicator found
// to exist already): the Triage id, level and source.
func CreateAttributes(id, level, source string) []Attribute {
	return []Attribute{{AttrID, id}, {AttrThreatLevel, level}, {AttrThreatSource, source}}
}

// UpdateAttributes is the enrichment of an update: level and source, each
// replacing the previous value on the ThreatQ indicator.
func UpdateAttributes(level, source string) []Attribute {
	return []Attribute{{AttrThreatLevel, level}, {AttrThreatSource, source}}
}
