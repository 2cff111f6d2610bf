package joseheader

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"
)

// token builds header.e30.AA from a raw header.
func token(header string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(header)) + ".e30.AA"
}

var es256 = Policy{Algorithms: []jose.SignatureAlgorithm{jose.ES256}}

func TestParse(t *testing.T) {
	h, err := Parse(token(`{"alg":"ES256","kid":"k1","typ":"JWT","x5t":"abc","custom":{"a":[1,2]}}`), es256)
	if err != nil {
		t.Fatal(err)
	}
	if h.Alg != jose.ES256 || h.Kid != "k1" || h.Typ != "JWT" || h.X5C != nil {
		t.Errorf("header %+v", h)
	}
	chain := Policy{Algorithms: es256.Algorithms, Type: "txntoken+jwt", X5C: true}
	h, err = Parse(token(`{"alg":"ES256","typ":"txntoken+jwt","x5c":["AAAA","BBBB"]}`), chain)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(h.X5C, ",") != "AAAA,BBBB" {
		t.Errorf("x5c %v", h.X5C)
	}
	// Escapes decode to the same names as in any other reader: \u0061lg
	// is alg, and a second one is a duplicate.
	if _, err := Parse(token(`{"\u0061lg":"ES256"}`), es256); err != nil {
		t.Errorf("an escaped name: %v", err)
	}
}

func TestParseRefuses(t *testing.T) {
	chain := Policy{Algorithms: []jose.SignatureAlgorithm{jose.ES256, jose.RS256}, Type: "txntoken+jwt", X5C: true}
	cases := []struct {
		name, token string
		p           Policy
		want        error
	}{
		{"case-variant alg after", token(`{"alg":"PS256","Alg":"RS256"}`), Policy{Algorithms: []jose.SignatureAlgorithm{jose.PS256, jose.RS256}}, ErrMember},
		{"case-variant alg before", token(`{"Alg":"RS256","alg":"PS256"}`), Policy{Algorithms: []jose.SignatureAlgorithm{jose.PS256, jose.RS256}}, ErrMember},
		{"exact duplicate", token(`{"alg":"ES256","alg":"ES256"}`), es256, ErrMember},
		{"escaped duplicate", token(`{"alg":"ES256","\u0061lg":"ES256"}`), es256, ErrMember},
		{"Unicode fold duplicate (Kelvin sign)", token(`{"alg":"ES256","kid":"a","` + "\u212aid" + `":"b"}`), es256, ErrMember},
		{"Unicode fold duplicate (long s)", token(`{"alg":"ES256","x":1,"` + "\u017f" + `":2,"s":3}`), es256, ErrMember},
		{"lone case variant", token(`{"ALG":"ES256"}`), es256, ErrMember},
		{"case-variant typ", token(`{"alg":"ES256","typ":"JWT","Typ":"txntoken+jwt"}`), es256, ErrMember},
		{"jku", token(`{"alg":"ES256","jku":"https://evil.example"}`), es256, ErrMember},
		{"JKU", token(`{"alg":"ES256","JKU":"https://evil.example"}`), es256, ErrMember},
		{"x5u", token(`{"alg":"ES256","x5u":"https://evil.example"}`), es256, ErrMember},
		{"jwk", token(`{"alg":"ES256","jwk":{"kty":"EC"}}`), es256, ErrMember},
		{"crit", token(`{"alg":"ES256","crit":["exp"],"exp":1}`), es256, ErrMember},
		{"b64", token(`{"alg":"ES256","b64":false}`), es256, ErrMember},
		{"x5c not allowed", token(`{"alg":"ES256","x5c":["AAAA"]}`), es256, ErrMember},
		{"alg none", token(`{"alg":"none"}`), es256, ErrAlgorithm},
		{"alg HS256", token(`{"alg":"HS256"}`), es256, ErrAlgorithm},
		{"alg in another case", token(`{"alg":"es256"}`), es256, ErrAlgorithm},
		{"alg missing", token(`{"kid":"k1"}`), es256, ErrAlgorithm},
		{"empty list", token(`{"alg":"ES256"}`), Policy{}, ErrAlgorithm},
		{"alg not a string", token(`{"alg":["ES256"]}`), es256, ErrMalformed},
		{"alg null", token(`{"alg":null}`), es256, ErrMalformed},
		{"kid not a string", token(`{"alg":"ES256","kid":1}`), es256, ErrMalformed},
		{"wrong typ", token(`{"alg":"ES256","typ":"JWT","x5c":["AAAA"]}`), chain, ErrType},
		{"typ missing", token(`{"alg":"ES256","x5c":["AAAA"]}`), chain, ErrType},
		{"x5c not strings", token(`{"alg":"ES256","typ":"txntoken+jwt","x5c":[1]}`), chain, ErrMalformed},
		{"x5c null", token(`{"alg":"ES256","typ":"txntoken+jwt","x5c":null}`), chain, ErrMalformed},
		{"a second object", token(`{"alg":"ES256"}{}`), es256, ErrMalformed},
		{"trailing data", token(`{"alg":"ES256"}x`), es256, ErrMalformed},
		{"an array", token(`["alg","ES256"]`), es256, ErrMalformed},
		{"unterminated", token(`{"alg":"ES256"`), es256, ErrMalformed},
		{"invalid UTF-8", token("{\"alg\":\"ES256\",\"k\xffd\":\"a\"}"), es256, ErrMalformed},
		{"two parts", "eyJhbGciOiJFUzI1NiJ9.e30", es256, ErrMalformed},
		{"five parts (JWE)", "eyJhbGciOiJFUzI1NiJ9.a.b.c.d", es256, ErrMalformed},
		{"padded base64", base64.URLEncoding.EncodeToString([]byte(`{"alg": "ES256"}`)) + ".e30.AA", es256, ErrMalformed},
		{"standard base64", base64.StdEncoding.EncodeToString([]byte(`{"alg":"ES256","kid":"??>"}`)) + ".e30.AA", es256, ErrMalformed},
		{"over the size", token(`{"alg":"ES256","x":"` + strings.Repeat("a", 100) + `"}`), Policy{Algorithms: es256.Algorithms, MaxSize: 64}, ErrSize},
		{"over the default size", token(`{"alg":"ES256","x":"` + strings.Repeat("a", DefaultMaxSize) + `"}`), es256, ErrSize},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h, err := Parse(tc.token, tc.p)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Parse = %+v, %v; want %v", h, err, tc.want)
			}
		})
	}
}

// FuzzParse: whatever Parse accepts has exactly one member per name under
// case folding, an algorithm from the list, none of the refused members,
// and the alg, kid and typ that a case-sensitive reader (go-jose's) sees.
func FuzzParse(f *testing.F) {
	for _, h := range []string{
		`{"alg":"ES256","kid":"k1"}`,
		`{"alg":"PS256","Alg":"RS256"}`,
		`{"alg":"ES256","typ":"txntoken+jwt","x5c":["AAAA"]}`,
		`{"alg":"ES256","\u0061lg":"RS256"}`,
		`{"alg":"ES256","jku":"https://evil.example"}`,
		`{"alg":"none"}`,
		`{"alg":"ES256"}{}`,
	} {
		f.Add(token(h))
	}
	f.Add("")
	f.Add("..")
	p := Policy{Algorithms: []jose.SignatureAlgorithm{jose.ES256, jose.RS256, jose.PS256}, X5C: true}
	f.Fuzz(func(t *testing.T, tok string) {
		h, err := Parse(tok, p)
		if err != nil {
			return
		}
		if h.Alg != jose.ES256 && h.Alg != jose.RS256 && h.Alg != jose.PS256 {
			t.Fatalf("accepted alg %q", h.Alg)
		}
		enc, _, _ := strings.Cut(tok, ".")
		raw, err := base64.RawURLEncoding.DecodeString(enc)
		if err != nil {
			t.Fatalf("accepted a header that is not base64url: %v", err)
		}
		var members map[string]json.RawMessage
		if err := json.Unmarshal(raw, &members); err != nil {
			t.Fatalf("accepted a header that is not an object: %v", err)
		}
		seen := map[string]bool{}
		for name := range members {
			if seen[fold(name)] {
				t.Fatalf("accepted two members that fold to %q", fold(name))
			}
			seen[fold(name)] = true
			for _, r := range refused {
				if strings.EqualFold(name, r) {
					t.Fatalf("accepted member %q", name)
				}
			}
		}
		// A case-sensitive reader sees the same alg, kid and typ.
		var exact struct {
			Alg *string `json:"alg"`
		}
		if json.Unmarshal(members["alg"], &exact.Alg) != nil || exact.Alg == nil || *exact.Alg != string(h.Alg) {
			t.Fatalf("alg %q, but the alg member is %s", h.Alg, members["alg"])
		}
		for name, got := range map[string]string{"kid": h.Kid, "typ": h.Typ} {
			var v string
			if m, ok := members[name]; ok && (json.Unmarshal(m, &v) != nil || v != got) {
				t.Fatalf("%s %q, but the member is %s", name, got, m)
			}
		}
	})
}
