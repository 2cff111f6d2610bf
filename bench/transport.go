package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/credflow/credflow/internal/hostenv"
	"github.com/credflow/credflow/proxy"
	"github.com/credflow/credflow/proxy/authz"
)

// TransportResult is one repeat of the transport scenario for one topology.
type TransportResult struct {
	Topology string  `json:"topology"` // T0 direct, T3 credflow TCP, T3q credflow QUIC
	Repeat   int     `json:"repeat"`
	Gbps     float64 `json:"bulk_gbit_s"`
	// CPUSecPerGB is the CPU of the whole process (client, both sidecars,
	// server) per GB moved.
	CPUSecPerGB float64 `json:"cpu_s_per_gb"`
	// Connect latency of a new app connection: connect, one byte each way.
	ConnP50 float64 `json:"new_conn_p50_us"`
	ConnP99 float64 `json:"new_conn_p99_us"`
}

// RunTransport measures bulk throughput (one stream, client to server) and
// new-app-connection latency for T0 (direct), T3 (outbound and inbound
// sidecars over mTLS on TCP) and T3q (the same over one QUIC connection),
// in process over loopback, interleaved per repeat.
func RunTransport(ctx context.Context, bulkBytes int64, conns, repeats int) ([]TransportResult, error) {
	sink, err := startSink(ctx)
	if err != nil {
		return nil, err
	}
	t3, err := startPair(ctx, sink, false)
	if err != nil {
		return nil, err
	}
	t3q, err := startPair(ctx, sink, true)
	if err != nil {
		return nil, err
	}
	topologies := []struct{ name, addr string }{{"T0 direct", sink}, {"T3 credflow TCP", t3}, {"T3q credflow QUIC", t3q}}
	var out []TransportResult
	for r := range repeats {
		for _, tp := range topologies {
			if err := ctx.Err(); err != nil {
				return out, err
			}
			res := TransportResult{Topology: tp.name, Repeat: r}
			cpu0, t0 := cpuTime(), time.Now()
			if err := bulk(tp.addr, bulkBytes); err != nil {
				return out, fmt.Errorf("bench: %s bulk: %w", tp.name, err)
			}
			wall, cpu := time.Since(t0), cpuTime()-cpu0
			res.Gbps = float64(bulkBytes) * 8 / wall.Seconds() / 1e9
			res.CPUSecPerGB = cpu.Seconds() / (float64(bulkBytes) / 1e9)
			lat, err := connectLatency(tp.addr, conns)
			if err != nil {
				return out, fmt.Errorf("bench: %s connections: %w", tp.name, err)
			}
			res.ConnP50, res.ConnP99 = lat[len(lat)/2], lat[len(lat)*99/100]
			out = append(out, res)
		}
	}
	return out, nil
}

// startSink serves on loopback: a connection whose first byte is 'p' gets
// an echo of one byte; any other is read to EOF and answered with the
// byte count.
func startSink(ctx context.Context) (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	context.AfterFunc(ctx, func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 256<<10)
				n, err := c.Read(buf[:1])
				if err != nil || n == 0 {
					return
				}
				if buf[0] == 'p' {
					c.Write(buf[:1])
					return
				}
				total := int64(n)
				for {
					n, err := c.Read(buf)
					total += int64(n)
					if err != nil {
						break
					}
				}
				var b [8]byte
				binary.BigEndian.PutUint64(b[:], uint64(total))
				c.Write(b[:])
			}()
		}
	}()
	return l.Addr().String(), nil
}

// startPair runs an inbound sidecar in front of app and an outbound one in
// front of it, over TCP or QUIC, and returns the outbound's address.
func startPair(ctx context.Context, app string, useQUIC bool) (string, error) {
	serverSVID, clientSVID, bundles, err := newIdentities()
	if err != nil {
		return "", err
	}
	server, client := staticSVID{serverSVID}, staticSVID{clientSVID}
	allow, _ := authz.ParsePolicy([]string{"spiffe://bench.example/client"})
	expect, _ := authz.ParsePolicy([]string{"spiffe://bench.example/server"})
	in := proxy.Inbound{Name: "app", Listen: "127.0.0.1:0", App: app, Allow: allow}
	if useQUIC {
		in.QUICListen = "127.0.0.1:0"
	}
	inP, err := proxy.New(proxy.Config{SVIDs: server, Bundles: bundles, Inbound: []proxy.Inbound{in}})
	if err != nil {
		return "", err
	}
	if err := inP.Listen(); err != nil {
		return "", err
	}
	go inP.Serve(ctx)
	out := proxy.Outbound{Name: "up", Listen: "127.0.0.1:0", Upstream: inP.Addr("app").String(), Expect: expect}
	if useQUIC {
		out.QUICUpstream = inP.QUICAddr("app").String()
	}
	outP, err := proxy.New(proxy.Config{SVIDs: client, Bundles: bundles, Outbound: []proxy.Outbound{out}})
	if err != nil {
		return "", err
	}
	if err := outP.Listen(); err != nil {
		return "", err
	}
	go outP.Serve(ctx)
	return outP.Addr("up").String(), nil
}

// bulk writes n bytes in 128 KiB writes, half-closes, and checks the count
// the sink returns.
func bulk(addr string, n int64) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	buf := make([]byte, 128<<10)
	buf[0] = 'b'
	for sent := int64(0); sent < n; {
		k := min(int64(len(buf)), n-sent)
		w, err := c.Write(buf[:k])
		if err != nil {
			return err
		}
		sent += int64(w)
	}
	c.(*net.TCPConn).CloseWrite()
	var b [8]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return err
	}
	if got := int64(binary.BigEndian.Uint64(b[:])); got != n {
		return fmt.Errorf("sink received %d of %d bytes", got, n)
	}
	return nil
}

// connectLatency opens conns sequential app connections, each sending one
// byte and reading its echo, and returns the sorted latencies in µs.
func connectLatency(addr string, conns int) ([]float64, error) {
	lat := make([]float64, 0, conns)
	for range conns {
		start := time.Now()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return nil, err
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		b := []byte{'p'}
		if _, err := c.Write(b); err != nil {
			c.Close()
			return nil, err
		}
		if _, err := io.ReadFull(c, b); err != nil {
			c.Close()
			return nil, err
		}
		lat = append(lat, float64(time.Since(start).Microseconds()))
		c.Close()
	}
	slices.Sort(lat)
	return lat, nil
}

// TransportTable renders the transport results as Markdown: medians over
// repeats, with ratios against T3 (TCP) in the same run.
func TransportTable(env *hostenv.Environment, rs []TransportResult, bulkBytes int64, conns, repeats int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Transports: TCP against QUIC between sidecars\n\n"+
		"In process over loopback: a client, an outbound sidecar, an inbound sidecar and a server. Bulk: one stream of "+
		"%d MiB client to server in 128 KiB writes; CPU is the whole process's per GB. New app connection: connect, "+
		"one byte each way, close; %d sequential (over TCP each pays a resumed mutual-TLS handshake; over QUIC it is a "+
		"new stream on the established connection). %d repeats, interleaved; median (min–max).\n\n", bulkBytes>>20, conns, repeats)
	writeEnv(&b, env)
	b.WriteString("| topology | bulk Gbit/s | CPU-s/GB (all processes) | new connection p50 µs | p99 µs |\n|---|---|---|---|---|\n")
	by := map[string][]TransportResult{}
	var order []string
	for _, r := range rs {
		if _, ok := by[r.Topology]; !ok {
			order = append(order, r.Topology)
		}
		by[r.Topology] = append(by[r.Topology], r)
	}
	med := func(v []float64) (float64, float64, float64) {
		slices.Sort(v)
		return v[len(v)/2], v[0], v[len(v)-1]
	}
	summary := map[string][3]float64{}
	for _, name := range order {
		var g, c, p50, p99 []float64
		for _, r := range by[name] {
			g, c, p50, p99 = append(g, r.Gbps), append(c, r.CPUSecPerGB), append(p50, r.ConnP50), append(p99, r.ConnP99)
		}
		gm, glo, ghi := med(g)
		cm, clo, chi := med(c)
		pm, _, _ := med(p50)
		qm, _, _ := med(p99)
		summary[name] = [3]float64{gm, pm, cm}
		fmt.Fprintf(&b, "| %s | %.2f (%.2f–%.2f) | %.2f (%.2f–%.2f) | %.0f | %.0f |\n", name, gm, glo, ghi, cm, clo, chi, pm, qm)
	}
	t3, t3q := summary["T3 credflow TCP"], summary["T3q credflow QUIC"]
	if t3[0] > 0 {
		b.WriteString("\n| target (BENCH.md) | measured | |\n|---|---|---|\n")
		ok := t3q[0] >= 0.5*t3[0]
		fmt.Fprintf(&b, "| QUIC bulk ≥ 0.5× T3 | %.2f× | %s |\n", t3q[0]/t3[0], map[bool]string{true: "met", false: "not met"}[ok])
		fmt.Fprintf(&b, "| a new app connection over an established QUIC connection adds no handshake | p50 %.0f µs against %.0f µs over TCP (%.2f×) | %s |\n",
			t3q[1], t3[1], t3q[1]/t3[1], map[bool]string{true: "met", false: "not met"}[t3q[1] < t3[1]])
	}
	return b.String()
}
