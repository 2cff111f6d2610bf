package proxy

import (
	"context"
	"crypto/tls"
	"net/http"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/credflow/credflow/reason"
)

// Tracing, in the HTTP modes: each sidecar a request passes adds a server
// span (the request received: from the app on an outbound or egress
// listener, from the peer on an inbound one) and, when the request goes
// on, a client span under it (the request sent: to the upstream, or to
// the app). The W3C trace context (traceparent, tracestate) is continued
// from the request received, or started here, and sent on with the
// request, so that the app's spans, both sidecars' and the upstream app's
// make one trace. Without Config.Tracer nothing of this runs.

// Span attribute keys.
const (
	attrListener = attribute.Key("credflow.listener")
	attrPeer     = attribute.Key("credflow.peer_id")
	attrDecision = attribute.Key("credflow.decision")
	attrReason   = attribute.Key("credflow.reason")
	attrRoute    = attribute.Key("credflow.route")
	attrGroup    = attribute.Key("credflow.tls_group")
	attrCred     = attribute.Key("credflow.credential")
	attrStatus   = attribute.Key("http.response.status_code")
	attrMethod   = attribute.Key("http.request.method")
	attrPath     = attribute.Key("url.path")
)

// The span kinds as start options, made once: an option made per span is
// an allocation per span.
var (
	serverKind = trace.WithSpanKind(trace.SpanKindServer)
	clientKind = trace.WithSpanKind(trace.SpanKindClient)
)

// w3c is the propagator of the trace context: W3C Trace Context only.
var w3c propagation.TextMapPropagator = propagation.TraceContext{}

// traceHeaders is the trace context's carrier on an HTTP header. It is
// propagation.HeaderCarrier with the two W3C keys mapped to their
// canonical forms directly: HeaderCarrier canonicalizes the propagator's
// lower-case keys on every call, which allocates.
type traceHeaders http.Header

func (h traceHeaders) key(k string) string {
	switch k {
	case "traceparent":
		return "Traceparent"
	case "tracestate":
		return "Tracestate"
	}
	return http.CanonicalHeaderKey(k)
}

func (h traceHeaders) Get(k string) string {
	if v := h[h.key(k)]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func (h traceHeaders) Values(k string) []string { return h[h.key(k)] }
func (h traceHeaders) Set(k, v string)          { h[h.key(k)] = []string{v} }
func (h traceHeaders) Keys() []string           { return propagation.HeaderCarrier(h).Keys() }

// serverSpan starts the server span of a request received on l, continuing
// the trace context the request carries, and returns the request's context
// with the span in it (for the client span under it), and the span: nil,
// and the request's context as it is, without tracing. The caller puts the
// context on the copy of the request it makes anyway. The span's
// attributes are all set when it ends (endServerSpan), in one call: the
// SDK grows a span's attribute list on each.
func (p *Proxy) serverSpan(l *listener, r *http.Request) (context.Context, trace.Span) {
	if p.tracer == nil || l.untraced || p.cfg.TraceFollowOnly && !sampledParent(r.Header) {
		return r.Context(), nil
	}
	ctx := w3c.Extract(r.Context(), traceHeaders(r.Header))
	return p.tracer.Start(ctx, l.spanName, serverKind)
}

// attrBuf holds the attributes of a span while they are gathered for its
// one SetAttributes call, which copies them: one from attrBufs is reused
// rather than an array allocated per span (passed to the span, any array
// escapes).
type attrBuf [10]attribute.KeyValue

var attrBufs = sync.Pool{New: func() any { return new(attrBuf) }}

// setAttributes sets attrs (in buf, or grown past it) on span and returns
// buf to the pool.
func setAttributes(span trace.Span, buf *attrBuf, attrs []attribute.KeyValue) {
	span.SetAttributes(attrs...)
	clear(buf[:])
	attrBufs.Put(buf)
}

// endServerSpan records a request's outcome on its server span (from
// serverSpan, for a request received on l) and ends it. A refusal is the
// span's error.
func endServerSpan(span trace.Span, l *listener, method string, peer spiffeid.ID, route string, why reason.Reason, status int, extra ...attribute.KeyValue) {
	if span == nil {
		return
	}
	buf := attrBufs.Get().(*attrBuf)
	attrs := append(buf[:0], attrListener.String(l.name), attrMethod.String(method))
	if why != "" {
		span.SetStatus(codes.Error, string(why))
		attrs = append(attrs, attrDecision.String("deny"), attrReason.String(string(why)))
	} else {
		attrs = append(attrs, attrDecision.String("allow"))
	}
	if !peer.IsZero() {
		attrs = append(attrs, attrPeer.String(peer.String()))
	}
	if route != "" {
		attrs = append(attrs, attrRoute.String(route))
	}
	if status != 0 {
		attrs = append(attrs, attrStatus.Int(status))
	}
	setAttributes(span, buf, append(attrs, extra...))
	span.End()
}

// tracedTransport is a RoundTripper that wraps each request it sends in a
// client span, child of the span in the request's context, and sends the
// trace context on with the request (replacing any the sender put there).
// It sets the trace headers on the request it is given rather than on a
// copy: its callers are the forwarder's and httputil.ReverseProxy's, whose
// requests are their own copies of the request received, each with a
// header map of its own.
type tracedTransport struct {
	rt         http.RoundTripper
	tracer     trace.Tracer
	name       string
	followOnly bool // Config.TraceFollowOnly: no span without a recording parent
}

func (t tracedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if t.followOnly && spanOf(r.Context()) == nil {
		return t.rt.RoundTrip(r)
	}
	// The span's context goes on in the headers only: nothing below this
	// transport makes spans, so the request keeps its context (a copy of
	// the request saved).
	ctx, span := t.tracer.Start(r.Context(), t.name, clientKind)
	defer span.End()
	delete(r.Header, "Traceparent")
	delete(r.Header, "Tracestate")
	w3c.Inject(ctx, traceHeaders(r.Header))
	resp, err := t.rt.RoundTrip(r)
	buf := attrBufs.Get().(*attrBuf)
	attrs := append(buf[:0], attrMethod.String(r.Method), attrPath.String(r.URL.Path))
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
		setAttributes(span, buf, attrs)
		return nil, err
	}
	attrs = append(attrs, attrStatus.Int(resp.StatusCode))
	if resp.TLS != nil {
		if peer, _ := peerOf(resp.TLS); !peer.IsZero() {
			attrs = append(attrs, attrPeer.String(peer.String()))
		}
		attrs = append(attrs, attrGroup.String(GroupName(resp.TLS.CurveID)))
	}
	if resp.StatusCode >= 500 {
		span.SetStatus(codes.Error, http.StatusText(resp.StatusCode))
	}
	setAttributes(span, buf, attrs)
	return resp, nil
}

// traced wraps rt, l's, in client spans named name, or returns it as it
// is without tracing.
func (p *Proxy) traced(l *listener, rt http.RoundTripper, name string) http.RoundTripper {
	if p.tracer == nil || l.untraced {
		return rt
	}
	return tracedTransport{rt: rt, tracer: p.tracer, name: name, followOnly: p.cfg.TraceFollowOnly}
}

// sampledParent reports whether h carries a W3C traceparent (version 00)
// with the sampled flag set. It allocates nothing: it runs for every
// request when only sampled traces are followed.
func sampledParent(h http.Header) bool {
	v := h["Traceparent"]
	if len(v) != 1 || len(v[0]) != 55 || v[0][:3] != "00-" {
		return false
	}
	flags := v[0][54]
	switch {
	case flags >= '0' && flags <= '9':
		return (flags-'0')&1 == 1
	case flags >= 'a' && flags <= 'f':
		return (flags-'a'+10)&1 == 1
	}
	return false
}

// spanOf returns the recording span of ctx, or nil.
func spanOf(ctx context.Context) trace.Span {
	if s := trace.SpanFromContext(ctx); s.IsRecording() {
		return s
	}
	return nil
}

// Attribute keys of connection spans.
const (
	attrTransport = attribute.Key("credflow.transport")
	attrFromApp   = attribute.Key("credflow.bytes_from_app")
	attrToApp     = attribute.Key("credflow.bytes_to_app")
)

// connSpan starts the span of a relayed L4 connection on l, from start, or
// returns nil when connections are not traced.
func (p *Proxy) connSpan(ctx context.Context, l *listener, start time.Time, peer spiffeid.ID, cs *tls.ConnectionState, transport string) trace.Span {
	if p.tracer == nil || !p.cfg.TraceConnections || l.untraced {
		return nil
	}
	kind := trace.SpanKindServer
	if l.dir == dirOutbound {
		kind = trace.SpanKindClient
	}
	attrs := []attribute.KeyValue{attrListener.String(l.name), attrTransport.String(transport)}
	if !peer.IsZero() {
		attrs = append(attrs, attrPeer.String(peer.String()))
	}
	if cs != nil {
		attrs = append(attrs, attrGroup.String(GroupName(cs.CurveID)))
	}
	_, span := p.tracer.Start(ctx, "credflow "+string(l.dir)+" "+l.name+" connection", trace.WithSpanKind(kind),
		trace.WithTimestamp(start), trace.WithNewRoot(), trace.WithAttributes(attrs...))
	return span
}

// endConnSpan records a connection's end on its span: the bytes each way,
// and the reason the sidecar closed or refused it (an error).
func endConnSpan(span trace.Span, why reason.Reason, fromApp, toApp int64) {
	if span == nil {
		return
	}
	span.SetAttributes(attrFromApp.Int64(fromApp), attrToApp.Int64(toApp))
	if why != "" {
		span.SetAttributes(attrReason.String(string(why)))
		span.SetStatus(codes.Error, string(why))
	}
	span.End()
}
