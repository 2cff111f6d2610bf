package token_test

import (
	"testing"

	"github.com/credflow/credflow/token"
)

func TestCheckTxnAudiences(t *testing.T) {
	for _, tc := range []struct {
		auds []string
		ok   bool
	}{
		{[]string{"spiffe://example.org"}, true},
		{[]string{"spiffe://example.org/orders", "spiffe://example.org/payments"}, true},
		{[]string{"spiffe://example.org/orders", "spiffe://partner.example"}, true},
		{nil, false},
		{[]string{"orders-api"}, false},
		{[]string{"spiffe://example.org/orders", "spiffe://example.org/orders"}, false},
		{[]string{"spiffe://example.org", "spiffe://example.org/orders"}, false},
	} {
		if err := token.CheckTxnAudiences(tc.auds); (err == nil) != tc.ok {
			t.Errorf("CheckTxnAudiences(%q) = %v, want ok %v", tc.auds, err, tc.ok)
		}
	}
}

func TestCheckAlgorithm(t *testing.T) {
	for _, a := range token.Algorithms {
		if err := token.CheckAlgorithm(a); err != nil {
			t.Errorf("%s: %v", a, err)
		}
	}
	for _, a := range []string{"HS256", "none", "", "es256"} {
		if token.CheckAlgorithm(a) == nil {
			t.Errorf("%q accepted", a)
		}
	}
}
