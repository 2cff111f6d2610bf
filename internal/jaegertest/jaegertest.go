// Package jaegertest runs a real tracing backend for the tracing tests:
// Jaeger (bin/jaeger, built by `make jaeger` from deploy/jaeger), keeping
// traces in memory, its OTLP/gRPC receiver and its query API on free
// loopback ports. The same receiver takes OTLP logs (the audit export),
// which Jaeger's collector prints with its debug exporter: LogBodies reads
// them back.
package jaegertest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/credflow/credflow/internal/freeport"
	"github.com/credflow/credflow/internal/spiretest"
)

// config is Jaeger's configuration: memory storage, the OTLP/gRPC receiver,
// the query API, a health check, logs printed on the standard output,
// and no telemetry port of its own.
const config = `service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
    logs:
      receivers: [otlp]
      exporters: [debug]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:%d
    grpc:
      endpoint: 127.0.0.1:%d
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 10000
  healthcheckv2:
    use_v2: true
    http:
      endpoint: 127.0.0.1:%d
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:%d
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
  debug:
    verbosity: detailed
    use_internal_logger: false
`

// Jaeger is a running Jaeger.
type Jaeger struct {
	// OTLP is the OTLP/gRPC receiver's host:port.
	OTLP string
	// Query is the query API's base URL.
	Query string

	dir  string
	cmd  *exec.Cmd
	done chan struct{}
	log  *lockedBuffer // standard error
	out  *lockedBuffer // standard output: the logs received
}

// Start runs bin/jaeger (binDir, or bin/ at the module's root when empty)
// until Close.
func Start(ctx context.Context, binDir string) (*Jaeger, error) {
	if binDir == "" {
		var err error
		if binDir, err = spiretest.DefaultBinDir(); err != nil {
			return nil, err
		}
	}
	bin := filepath.Join(binDir, "jaeger")
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("jaegertest: %w (make jaeger builds it)", err)
	}
	ports := make([]int, 4)
	for i := range ports {
		if ports[i] = freePort(); ports[i] == 0 {
			return nil, errors.New("jaegertest: no free port")
		}
	}
	dir, err := os.MkdirTemp("", "jaegertest-")
	if err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(conf, fmt.Appendf(nil, config, ports[0], ports[1], ports[2], ports[3]), 0o644); err != nil {
		return nil, err
	}
	j := &Jaeger{OTLP: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[3])), Query: fmt.Sprintf("http://127.0.0.1:%d", ports[0]),
		dir: dir, done: make(chan struct{}), log: &lockedBuffer{}, out: &lockedBuffer{}}
	j.cmd = exec.Command(bin, "--config", conf)
	j.cmd.Stdout, j.cmd.Stderr = j.out, j.log
	if err := j.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("jaegertest: %w", err)
	}
	go func() { j.cmd.Wait(); close(j.done) }()
	health := fmt.Sprintf("http://127.0.0.1:%d/status", ports[2])
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, health, nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return j, nil
			}
		}
		select {
		case <-j.done:
			os.RemoveAll(dir)
			return nil, fmt.Errorf("jaegertest: jaeger exited: %s", j.log.String())
		case <-ctx.Done():
			j.Close()
			return nil, fmt.Errorf("jaegertest: not ready: %w: %s", ctx.Err(), j.log.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Close stops Jaeger.
func (j *Jaeger) Close() {
	j.cmd.Process.Kill()
	<-j.done
	os.RemoveAll(j.dir)
}

// Log is Jaeger's output so far.
func (j *Jaeger) Log() string { return j.log.String() }

// LogBodies returns the bodies of the OTLP log records Jaeger has received
// so far (string bodies, as its debug exporter prints them), in the order
// received.
func (j *Jaeger) LogBodies() []string {
	var bodies []string
	for line := range strings.Lines(j.out.String()) {
		line = strings.TrimRight(line, "\n")
		if body, ok := strings.CutPrefix(line, "Body: Str("); ok && strings.HasSuffix(body, ")") {
			bodies = append(bodies, strings.TrimSuffix(body, ")"))
		}
	}
	return bodies
}

// Span is a span as the query API returns it.
type Span struct {
	SpanID        string `json:"spanID"`
	OperationName string `json:"operationName"`
	References    []struct {
		RefType string `json:"refType"`
		SpanID  string `json:"spanID"`
	} `json:"references"`
	Tags []struct {
		Key   string `json:"key"`
		Value any    `json:"value"`
	} `json:"tags"`
	ProcessID string `json:"processID"`
	// Service is the service name of the span's process.
	Service string `json:"-"`
}

// Parent is the span's parent span ID, or "".
func (s Span) Parent() string {
	for _, r := range s.References {
		if r.RefType == "CHILD_OF" {
			return r.SpanID
		}
	}
	return ""
}

// Tag returns the value of the span's tag key, as text, or "".
func (s Span) Tag(key string) string {
	for _, t := range s.Tags {
		if t.Key == key {
			return fmt.Sprint(t.Value)
		}
	}
	return ""
}

// Trace returns the spans of the trace id (32 hex digits), or an error
// when Jaeger does not have it.
func (j *Jaeger) Trace(ctx context.Context, id string) ([]Span, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, j.Query+"/api/traces/"+id, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("jaegertest: trace %s: %s", id, resp.Status)
	}
	var doc struct {
		Data []struct {
			Spans     []Span `json:"spans"`
			Processes map[string]struct {
				ServiceName string `json:"serviceName"`
			} `json:"processes"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		return nil, err
	}
	if len(doc.Data) != 1 {
		return nil, fmt.Errorf("jaegertest: trace %s: %d traces in the answer", id, len(doc.Data))
	}
	spans := doc.Data[0].Spans
	for i := range spans {
		spans[i].Service = doc.Data[0].Processes[spans[i].ProcessID].ServiceName
	}
	return spans, nil
}

func freePort() int {
	p, _ := freeport.Port() // 0 on error: the server then fails to start, and says so
	return p
}

// lockedBuffer is Jaeger's output, written by the process's copy
// goroutines and read by the test.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
