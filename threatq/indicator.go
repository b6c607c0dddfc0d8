package threatq

import "github.com/tqtriage/tqtriage/threatq/internal/wire"

// Indicator is one ThreatQ indicator as this service uses it. Type is the
// type's name ("SHA-256", "FQDN", …), never its id: type ids differ per
// ThreatQ instance.
//
// It encodes as {"id":…,"type":"…","value":"…"} and decodes from that or
// from a whole indicator object as the API returns it, where "type" is an
// object {"id","name","class"}; "id" may be a number or a string holding
// one. Decoding does not check that the fields are present: callers decide
// what an incomplete indicator means.
//
// Attributes are the attribute rows the indicator object embeds, when it
// does (a collection page does): what ThreatQ holds already, so that a
// later step need not ask again. nil: the object had no attributes list;
// empty: it said the indicator has none.
type Indicator struct {
	ID         int64          `json:"id"`
	Type       string         `json:"type"`
	Value      string         `json:"value"`
	Attributes []AttributeRow `json:"attributes,omitempty"`
}

// AttributeRow is one attribute of an indicator as ThreatQ holds it: the
// row's id (to change it in place), name and value.
type AttributeRow = wire.IndicatorAttribute

// UnmarshalJSON implements json.Unmarshaler with the tolerance described on
// Indicator: the client's own decoding of a page's indicators.
func (in *Indicator) UnmarshalJSON(b []byte) error {
	return (*wire.Indicator)(in).UnmarshalJSON(b)
}
