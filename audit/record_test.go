package audit

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
)

// FuzzRecordJSON: the writer's hand-written encoding of a record is
// byte for byte json.Marshal's, for any text in any field, any time, and
// either both fail or neither does.
func FuzzRecordJSON(f *testing.F) {
	f.Add("spiffe://example.org/frontend", "/v1/orders/42", "<a&b>\"\\\n\t\x01\x7f", "\u2028\u2029\xff\xfeé", int64(1796580000123456789), 0, uint64(7), true)
	f.Add("", "", "", "", int64(0), 3600, uint64(0), false)
	f.Add("a", "b", "c", "d", int64(-9_000_000_000_000_000_000), -5400, uint64(1)<<63, true)
	f.Add("x", "\b\f\r", "\x00\x1f", "日本", int64(9_000_000_000_000_000_000), 59, uint64(1), false)
	f.Fuzz(func(t *testing.T, s1, s2, s3, s4 string, nanos int64, offset int, n uint64, checkpoint bool) {
		zone := time.FixedZone("z", offset%(48*3600))
		r := Record{V: Version, Seq: n, Prev: s4, Event: Event{Type: Type(s1), Time: time.Unix(0, nanos).In(zone),
			Listener: s1, Direction: s2, Transport: s3, PeerID: s4, Decision: s1, Reason: s2, Route: s3, Method: s4,
			Path: s2, Group: s3, Kind: Kind(s4), Audience: s1, JTI: s2, KeyID: s3, Fingerprint: s4, Subject: s1,
			Issuer: s2, TrustDomain: s3, Credential: s4, Detector: s1, Serial: s2}}
		if n%3 == 0 {
			r.Until = time.Unix(0, nanos^int64(n)).UTC()
			r.Changed = []string{s1, s2}
			r.Dropped, r.Failed = n, n/2
		}
		if checkpoint {
			r.Checkpoint, r.Signature, r.X5C, r.Unsigned = s3, s4, []string{s1, s2, s3}, s2
		}
		want, wantErr := json.Marshal(&r)
		got, err := r.marshal()
		if (err != nil) != (wantErr != nil) {
			t.Fatalf("marshal error %v, json.Marshal error %v", err, wantErr)
		}
		if err == nil && !bytes.Equal(got, want) {
			t.Fatalf("marshal:\n%s\njson.Marshal:\n%s", got, want)
		}
	})
}
