package threatq_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"regexp"

	"github.com/tqtriage/tqtriage/threatq"
	"github.com/tqtriage/tqtriage/threatq/threatqsim"
)

// Reading a data collection and writing a result back, against the
// simulator.
func Example() {
	sim := threatqsim.New(threatqsim.Options{})
	sim.AddCollection("c0ffee", "Phishing domains", []threatqsim.SeedIndicator{
		{Type: "FQDN", Value: "evil.example.com"},
		{Type: "MD5", Value: "d41d8cd98f00b204e9800998ecf8427e"},
	})
	srv := httptest.NewServer(sim)
	defer srv.Close()

	ctx := context.Background()
	c, err := threatq.New(ctx, threatq.Config{
		BaseURL:      srv.URL,
		ClientID:     threatqsim.DefaultClientID,
		ClientSecret: threatqsim.DefaultClientSecret,
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	name, err := c.CollectionName(ctx, "c0ffee")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("collection:", name)
	for in, err := range c.CollectionIndicators(ctx, "c0ffee", 0) {
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println(in.Type, in.Value)
		if err := c.SetAttributes(ctx, in.ID, []threatq.Attribute{{Name: "Threat Level", Value: "Malicious"}}); err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println("  attributes:", sim.Attributes(in.ID)[0].Name, "=", sim.Attributes(in.ID)[0].Value, sim.Attributes(in.ID)[0].Sources)
	}

	// A refused write reads as what ThreatQ said.
	err = c.SetAttributes(ctx, 1, []threatq.Attribute{{Name: "Threat Level", Value: "Malicious"}})
	fmt.Println(regexp.MustCompile(`\d+`).ReplaceAllString(err.Error(), "N"))
	// Output:
	// collection: Phishing domains
	// FQDN evil.example.com
	//   attributes: Threat Level = Malicious [Cofense Triage]
	// MD5 d41d8cd98f00b204e9800998ecf8427e
	//   attributes: Threat Level = Malicious [Cofense Triage]
	// list attributes of indicator N: threatq: GET /api/indicators/N/attributes: N Not Found: The requested indicator could not be found.
}
