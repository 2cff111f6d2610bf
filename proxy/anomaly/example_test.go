package anomaly_test

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/credflow/credflow/proxy/anomaly"
	"github.com/credflow/credflow/reason"
)

// A source address that fails its handshake again and again is
// quarantined: the proxy checks the quarantine before admitting anyone.
func Example() {
	d, err := anomaly.New(anomaly.Config{
		RefusalBurst: anomaly.Burst{Count: 5, Window: time.Minute,
			Response: anomaly.Response{Action: anomaly.ActionQuarantine, For: 10 * time.Minute}},
	}, anomaly.Options{Sinks: []anomaly.Sink{anomaly.SinkFunc(func(e anomaly.Event) {
		fmt.Printf("%s %s %s: %d refusals, until %s\n", e.Detector, e.Subject, e.Action,
			e.Evidence.Count, e.Until.Format(time.TimeOnly))
	})}})
	if err != nil {
		panic(err)
	}
	scanner := anomaly.Source(netip.MustParseAddr("192.0.2.7"))
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	for i := range 10 {
		now = now.Add(100 * time.Millisecond)
		// The proxy, for each connection: refuse the quarantined, observe
		// the outcome of the others.
		if _, ok := d.Quarantine().Quarantined(scanner, now); ok {
			fmt.Println("connection", i, "refused: quarantined")
			continue
		}
		d.Observe(anomaly.Observation{Subject: scanner, Kind: anomaly.Connection, Reason: reason.Untrusted, Time: now})
	}
	// Output:
	// refusal_burst 192.0.2.7 quarantine: 6 refusals, until 12:10:00
	// connection 6 refused: quarantined
	// connection 7 refused: quarantined
	// connection 8 refused: quarantined
	// connection 9 refused: quarantined
}
