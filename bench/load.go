package bench

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// The load generators are in-repo Go clients: they speak the server's
// byte protocols, and their RPC load is open loop: requests are issued on a
// fixed schedule whatever the responses do, and each one's latency runs
// from the moment it was issued, queueing behind busy connections included
// (no coordinated omission). Issued, not scheduled: a sleep here overshoots
// by about 0.5 ms at the median (measured on these VMs), which would
// otherwise be charged to every topology alike.

const ioDeadline = 2 * time.Minute

// bulkRun moves bytesPerStream over each of streams connections at once,
// up (client to server) or down, and returns the wall time.
func bulkRun(addr string, streams int, up bool, bytesPerStream int64) (time.Duration, error) {
	start := time.Now()
	var g errgroup.Group
	for range streams {
		g.Go(func() error {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(ioDeadline))
			if up {
				return upload(c, bytesPerStream)
			}
			return download(c, bytesPerStream)
		})
	}
	err := g.Wait()
	return time.Since(start), err
}

func upload(c net.Conn, n int64) error {
	var req [9]byte
	req[0] = opUpload
	binary.BigEndian.PutUint64(req[1:], uint64(n))
	if _, err := c.Write(req[:]); err != nil {
		return err
	}
	if err := writeN(c, n); err != nil {
		return err
	}
	var b [8]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return err
	}
	if got := int64(binary.BigEndian.Uint64(b[:])); got != n {
		return fmt.Errorf("server received %d of %d bytes", got, n)
	}
	return nil
}

func download(c net.Conn, n int64) error {
	var req [9]byte
	req[0] = opDownload
	binary.BigEndian.PutUint64(req[1:], uint64(n))
	if _, err := c.Write(req[:]); err != nil {
		return err
	}
	got, err := io.CopyBuffer(io.Discard, c, make([]byte, 128<<10))
	if err != nil {
		return err
	}
	if got != n {
		return fmt.Errorf("received %d of %d bytes", got, n)
	}
	return nil
}

// latencies is a set of durations in µs.
type latencies []float64

func (l latencies) pct(p float64) float64 {
	if len(l) == 0 {
		return 0
	}
	s := slices.Clone(l)
	slices.Sort(s)
	i := int(p / 100 * float64(len(s)))
	return s[min(i, len(s)-1)]
}

// openLoop issues calls to do at a fixed rate for duration, with at most
// workers in flight; it returns each call's latency from the moment it was
// issued and the number that failed.
func openLoop(ctx context.Context, rate int, duration time.Duration, workers int, do func(context.Context) error) (latencies, int, error) {
	n := int(duration.Seconds() * float64(rate))
	interval := time.Second / time.Duration(rate)
	due := make(chan time.Time, n)
	var (
		mu     sync.Mutex
		lat    = make(latencies, 0, n)
		failed atomic.Int64
		wg     sync.WaitGroup
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for at := range due {
				err := do(ctx)
				d := time.Since(at)
				if err != nil {
					failed.Add(1)
					continue
				}
				mu.Lock()
				lat = append(lat, float64(d.Nanoseconds())/1e3)
				mu.Unlock()
			}
		}()
	}
	start := time.Now()
	for i := range n {
		at := start.Add(time.Duration(i) * interval)
		if d := time.Until(at); d > 0 {
			time.Sleep(d)
		}
		if ctx.Err() != nil {
			break
		}
		due <- time.Now()
	}
	close(due)
	wg.Wait()
	return lat, int(failed.Load()), ctx.Err()
}

// httpClient is an HTTP/1.1 client with conns keep-alive connections.
func httpClient(conns int) *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			MaxConnsPerHost:     conns,
			MaxIdleConnsPerHost: conns,
			DisableCompression:  true,
			ForceAttemptHTTP2:   false,
		},
	}
}

// rpcHTTP1 posts 1 KB and reads the 1 KB answer at rate for duration over
// conns connections.
func rpcHTTP1(ctx context.Context, addr string, conns, rate int, duration time.Duration) (latencies, int, error) {
	client := httpClient(conns)
	defer client.CloseIdleConnections()
	url := "http://" + addr + "/rpc"
	do := func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(rpcBody))
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || n != int64(len(rpcBody)) {
			return fmt.Errorf("status %d, %d bytes", resp.StatusCode, n)
		}
		return nil
	}
	// Warm the connections.
	for range conns {
		if err := do(ctx); err != nil {
			return nil, 0, fmt.Errorf("warm-up: %w", err)
		}
	}
	return openLoop(ctx, rate, duration, conns, do)
}

// rpcGRPC calls the health service's Check (unary) at rate for duration on
// one HTTP/2 connection.
func rpcGRPC(ctx context.Context, addr string, rate int, duration time.Duration) (latencies, int, error) {
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, 0, err
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	do := func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	if err := do(ctx); err != nil {
		return nil, 0, fmt.Errorf("warm-up: %w", err)
	}
	return openLoop(ctx, rate, duration, 64, do)
}

// pingPong sends size bytes and reads them back n times on one connection.
func pingPong(addr string, size, n int) (latencies, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(ioDeadline))
	if _, err := c.Write([]byte{opEcho}); err != nil {
		return nil, err
	}
	msg, back := make([]byte, size), make([]byte, size)
	lat := make(latencies, 0, n)
	for i := range n + 10 {
		start := time.Now()
		if _, err := c.Write(msg); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(c, back); err != nil {
			return nil, err
		}
		if i >= 10 { // the first exchanges warm the path
			lat = append(lat, float64(time.Since(start).Nanoseconds())/1e3)
		}
	}
	return lat, nil
}

// newConnections opens n connections one after another, each exchanging
// one byte with the server before closing, and returns each one's time.
func newConnections(addr string, n int) (latencies, error) {
	lat := make(latencies, 0, n)
	b := []byte{opPing}
	for range n {
		start := time.Now()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return nil, err
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(b[:1]); err != nil {
			c.Close()
			return nil, err
		}
		if _, err := io.ReadFull(c, b[:1]); err != nil {
			c.Close()
			return nil, fmt.Errorf("connection %d: %w", len(lat), err)
		}
		lat = append(lat, float64(time.Since(start).Nanoseconds())/1e3)
		c.Close()
	}
	return lat, nil
}

// idleConnections opens n connections that each complete one exchange
// with the server and then stay open; close them with the returned func.
func idleConnections(addr string, n, parallel int) (func(), error) {
	conns := make([]net.Conn, n)
	closeAll := func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}
	var next atomic.Int64
	var g errgroup.Group
	for range parallel {
		g.Go(func() error {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return nil
				}
				c, err := net.DialTimeout("tcp", addr, 10*time.Second)
				if err != nil {
					return fmt.Errorf("connection %d: %w", i, err)
				}
				conns[i] = c
				c.SetDeadline(time.Now().Add(30 * time.Second))
				b := []byte{opIdle}
				if _, err := c.Write(b); err != nil {
					return err
				}
				if _, err := io.ReadFull(c, b); err != nil {
					return fmt.Errorf("connection %d: %w", i, err)
				}
				c.SetDeadline(time.Time{})
			}
		})
	}
	if err := g.Wait(); err != nil {
		closeAll()
		return nil, err
	}
	return closeAll, nil
}
