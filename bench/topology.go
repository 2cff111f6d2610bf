package bench

import (
	"fmt"
	"os"
	"time"
)

// Traffic kinds a topology may carry.
const (
	kindTCP   = "tcp"   // the server's byte protocols (bulk, echo, handshake, idle)
	kindHTTP1 = "http1" // HTTP/1.1 requests
	kindGRPC  = "grpc"  // gRPC over h2c
)

// topology is one way from the client to the server (BENCH.md's T0–T5, and
// T5h).
type topology struct {
	name string
	id   string // the short id of -topologies (T0, T3-X25519, T3h ...)
	// entry is where the client connects, by traffic kind; a kind that is
	// missing is not carried (T3h carries HTTP only).
	entry map[string]string
	// client and server are the processes on each side (a sidecar, a relay
	// or a peer), measured separately; T0 has none, T1 one.
	client, server *proc
	// link is the address between the two sides (credflow pairs).
	link string
}

func (t *topology) procs() []*proc {
	var ps []*proc
	for _, p := range []*proc{t.client, t.server} {
		if p != nil {
			ps = append(ps, p)
		}
	}
	return ps
}

func allKinds(addr string) map[string]string {
	return map[string]string{kindTCP: addr, kindHTTP1: addr, kindGRPC: addr}
}

// Topology names used in the report and the targets.
const (
	T0          = "T0 direct"
	T1          = "T1 plain relay"
	T2          = "T2 plain 2-hop"
	T3X25519    = "T3 credflow X25519"
	T3MLKEM     = "T3 credflow X25519MLKEM768"
	T3P256MLKEM = "T3 credflow SecP256r1MLKEM768"
	T3q         = "T3q credflow QUIC"
	T3h         = "T3h credflow HTTP"
	T3hGRPC     = "T3h credflow HTTP (gRPC app)"
	T3hJWT      = "T3h credflow HTTP, jwt.require"
	T3Awake     = "T3 credflow X25519MLKEM768, monitor awake"
	T3hAwake    = "T3h credflow HTTP, monitor awake"
	T4          = "T4 ghostunnel"
	T5          = "T5 HAProxy"
	T5h         = "T5h HAProxy HTTP/2"
)

// monitorAwake is the environment setting of the -awake topologies, an
// opt-in for the sidecars (README, "Performance"): with schedtrace set, the
// Go runtime's monitor thread (sysmon) never enters its deep sleep, which
// it otherwise enters whenever every P is idle and leaves, woken by futex,
// at the next system call: at 1000 requests per second that is twice per
// request per sidecar. The value is the largest the runtime takes (in ms,
// about 24.8 days), so the trace it would print comes at most that often.
const monitorAwake = "GODEBUG=schedtrace=2147483647"

// hybridConfig is the key exchange of T3-X25519MLKEM768 and T3-awake.
const hybridConfig = "key_exchange: {mode: hybrid-required, groups: [X25519MLKEM768]}\n"

// kexGroups are T3's key-exchange variants: the config each side gets.
var kexGroups = []struct{ name, topology, id, config string }{
	{"X25519", T3X25519, idT3X25519, "key_exchange: {mode: classical, groups: [X25519]}\n"},
	{"X25519MLKEM768", T3MLKEM, idT3MLKEM, hybridConfig},
	{"SecP256r1MLKEM768", T3P256MLKEM, idT3P256MLKEM, "key_exchange: {mode: hybrid-required, groups: [SecP256r1MLKEM768]}\n"},
}

// startRelay runs the harness's plain relay (io.Copy, which splices on
// Linux) from a new port to target.
func (r *rig) startRelay(name, target string) (*proc, string, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, "", err
	}
	p, err := r.start(name, r.bins.Self, "relay", "-listen", addr, "-to", target)
	if err != nil {
		return nil, "", err
	}
	return p, addr, p.waitListening(addr, 10*time.Second)
}

// pairOpts shape a credflow pair: extra is added to both configurations.
type pairOpts struct {
	name         string
	extra        string
	env          []string // added to both sidecars' environment
	quic         bool
	http         bool // protocol http on both; appProtocol h2c for gRPC
	h2c          bool
	jwtRequire   bool // the inbound verifies each request's JWT-SVID
	noResumption bool
}

func (r *rig) credflow(name, wl, config string, env ...string) (*proc, error) {
	admin, err := freeAddr()
	if err != nil {
		return nil, err
	}
	cfg := fmt.Sprintf("workload_api: %s\nadmin: %q\nlog: {level: warn}\nlimits: {max_connections: 100000}\n", wl, admin) + config
	if r.pprof {
		cfg += "debug: {pprof: true}\n"
	}
	path := r.path(name + ".yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	p, err := r.startEnv(name, env, r.bins.Credflow, "run", "-c", path)
	if err != nil {
		return nil, err
	}
	p.admin = admin
	return p, p.waitReady(20 * time.Second)
}

// credflowPair runs an inbound sidecar in front of target and an outbound one
// in front of it: a topology named name, carrying the given kinds.
func (r *rig) credflowPair(name, id string, o pairOpts, target string, kinds ...string) (*topology, error) {
	inAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	outAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	extra := o.extra
	if o.noResumption {
		extra += "tls: {session_resumption: false}\n"
	}
	inCfg := fmt.Sprintf("inbound:\n  - name: app\n    listen: %q\n    app: %q\n    allow: [spiffe://bench.example/client]\n", inAddr, target)
	outCfg := fmt.Sprintf("outbound:\n  - name: up\n    listen: %q\n    upstream: %q\n    expect: [spiffe://bench.example/server]\n", outAddr, inAddr)
	if o.quic {
		inCfg += fmt.Sprintf("    quic_listen: %q\n", inAddr)
		outCfg += "    transport: quic\n"
	}
	if o.http {
		inCfg += "    protocol: http\n    routes: [{peers: [spiffe://bench.example/client], paths: [/*]}]\n"
		if o.h2c {
			inCfg += "    app_protocol: h2c\n"
		}
		if o.jwtRequire {
			inCfg += "    jwt: {require: true}\n"
		}
		outCfg += "    protocol: http\n"
	}
	t := &topology{name: name, id: id, entry: map[string]string{}, link: inAddr}
	for _, k := range kinds {
		t.entry[k] = outAddr
	}
	if t.server, err = r.credflow(o.name+"-inbound", r.wlServer.Addr(), extra+inCfg, o.env...); err != nil {
		return nil, err
	}
	if t.client, err = r.credflow(o.name+"-outbound", r.wlClient.Addr(), extra+outCfg, o.env...); err != nil {
		return nil, err
	}
	return t, nil
}

// ghostunnelPair runs ghostunnel's client and server modes with the same
// certificates, each checking the other's SPIFFE ID.
func (r *rig) ghostunnelPair(target string) (client, server *proc, entry string, err error) {
	srvAddr, err := freeAddr()
	if err != nil {
		return nil, nil, "", err
	}
	cliAddr, err := freeAddr()
	if err != nil {
		return nil, nil, "", err
	}
	if server, err = r.start("ghostunnel-server", r.bins.Ghostunnel, "server", "--listen", srvAddr, "--target", target,
		"--cert", r.path("server.crt"), "--key", r.path("server.key"), "--cacert", r.path("ca.pem"),
		"--allow-uri", "spiffe://bench.example/client", "--quiet=conns"); err != nil {
		return nil, nil, "", err
	}
	if err := server.waitListening(srvAddr, 10*time.Second); err != nil {
		return nil, nil, "", err
	}
	if client, err = r.start("ghostunnel-client", r.bins.Ghostunnel, "client", "--listen", cliAddr, "--target", srvAddr,
		"--cert", r.path("client.crt"), "--key", r.path("client.key"), "--cacert", r.path("ca.pem"),
		"--verify-uri", "spiffe://bench.example/server", "--override-server-name", serverName, "--quiet=conns"); err != nil {
		return nil, nil, "", err
	}
	return client, server, cliAddr, client.waitListening(cliAddr, 10*time.Second)
}

// haproxyPair runs two HAProxy processes, TLS 1.3 between them with the
// same certificates. HAProxy verifies the peer's chain against the CA but
// has no SPIFFE ID check. In TCP mode (T5) they relay bytes; in HTTP mode
// (T5h, http set) each parses the requests, HTTP/1.1 on the client's and
// the app's side and HTTP/2 between them (ALPN h2), the client side's
// connections to the other shared by its clients' requests (http-reuse
// always), as credflow's HTTP mode pools its own.
func (r *rig) haproxyPair(target string, http bool) (client, server *proc, entry string, err error) {
	srvAddr, err := freeAddr()
	if err != nil {
		return nil, nil, "", err
	}
	cliAddr, err := freeAddr()
	if err != nil {
		return nil, nil, "", err
	}
	name, mode, alpn, reuse := "haproxy", "tcp", "", ""
	if http {
		name, mode, alpn, reuse = "haproxy-http", "http", " alpn h2", "  http-reuse always\n"
	}
	// maxconn: HAProxy reserves two descriptors per connection and
	// refuses to start if the limit cannot hold them.
	common := fmt.Sprintf("global\n  maxconn %d\n  log stderr local0 err\ndefaults\n  mode %s\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n",
		(r.fileLimit-200)/2, mode)
	srvCfg := common + fmt.Sprintf("frontend tls\n  bind %s ssl crt %s ca-file %s verify required ssl-min-ver TLSv1.3%s\n  default_backend app\n"+
		"backend app\n  server app %s\n", srvAddr, r.path("server.pem"), r.path("ca.pem"), alpn, target)
	cliCfg := common + fmt.Sprintf("frontend plain\n  bind %s\n  default_backend up\n"+
		"backend up\n%s  server up %s ssl crt %s ca-file %s verify required ssl-min-ver TLSv1.3%s\n",
		cliAddr, reuse, srvAddr, r.path("client.pem"), r.path("ca.pem"), alpn)
	for file, cfg := range map[string]string{name + "-server.cfg": srvCfg, name + "-client.cfg": cliCfg} {
		if err := os.WriteFile(r.path(file), []byte(cfg), 0o644); err != nil {
			return nil, nil, "", err
		}
	}
	if server, err = r.start(name+"-server", r.bins.HAProxy, "-db", "-f", r.path(name+"-server.cfg")); err != nil {
		return nil, nil, "", err
	}
	if err := server.waitListening(srvAddr, 10*time.Second); err != nil {
		return nil, nil, "", err
	}
	if client, err = r.start(name+"-client", r.bins.HAProxy, "-db", "-f", r.path(name+"-client.cfg")); err != nil {
		return nil, nil, "", err
	}
	return client, server, cliAddr, client.waitListening(cliAddr, 10*time.Second)
}

// startTopologies starts the selected topologies in front of the server at
// target. Topologies whose peer binary is not given are skipped with a
// note.
func (r *rig) startTopologies(target string, sel Selection, notef func(string, ...any)) ([]*topology, error) {
	var tops []*topology
	if sel.topology(idT0) {
		tops = append(tops, &topology{name: T0, id: idT0, entry: allKinds(target)})
	}
	if sel.topology(idT1) {
		relay, addr, err := r.startRelay("relay-1", target)
		if err != nil {
			return nil, err
		}
		tops = append(tops, &topology{name: T1, id: idT1, entry: allKinds(addr), client: relay})
	}
	if sel.topology(idT2) {
		second, addr2, err := r.startRelay("relay-2b", target)
		if err != nil {
			return nil, err
		}
		first, addr1, err := r.startRelay("relay-2a", addr2)
		if err != nil {
			return nil, err
		}
		tops = append(tops, &topology{name: T2, id: idT2, entry: allKinds(addr1), client: first, server: second})
	}
	type pair struct {
		name, id string
		o        pairOpts
		kinds    []string
	}
	var pairs []pair
	for _, g := range kexGroups {
		pairs = append(pairs, pair{g.topology, g.id, pairOpts{name: "t3-" + g.name, extra: g.config}, []string{kindTCP, kindHTTP1, kindGRPC}})
	}
	pairs = append(pairs,
		pair{T3q, idT3q, pairOpts{name: "t3q", quic: true}, []string{kindTCP, kindHTTP1, kindGRPC}},
		// T3h: the app protocol is per listener (HTTP/1.1 or h2c), so one
		// pair each.
		pair{T3h, idT3h, pairOpts{name: "t3h", http: true}, []string{kindHTTP1}},
		pair{T3hGRPC, idT3hGRPC, pairOpts{name: "t3h-grpc", http: true, h2c: true}, []string{kindGRPC}},
		// T3h-jwt: T3h with the JWT-SVID the outbound attaches to each
		// request (audience: the server's ID) verified by the inbound.
		pair{T3hJWT, idT3hJWT, pairOpts{name: "t3h-jwt", http: true, jwtRequire: true}, []string{kindHTTP1}},
		// T3-awake, T3h-awake: T3 (hybrid) and T3h with the Go runtime's
		// monitor thread kept out of its deep sleep (monitorAwake), for
		// the RPC scenarios only.
		pair{T3Awake, idT3Awake, pairOpts{name: "t3-awake", extra: hybridConfig, env: []string{monitorAwake}}, []string{kindHTTP1, kindGRPC}},
		pair{T3hAwake, idT3hAwake, pairOpts{name: "t3h-awake", http: true, env: []string{monitorAwake}}, []string{kindHTTP1}},
	)
	for _, pr := range pairs {
		if !sel.topology(pr.id) {
			continue
		}
		t, err := r.credflowPair(pr.name, pr.id, pr.o, target, pr.kinds...)
		if err != nil {
			return nil, err
		}
		tops = append(tops, t)
	}
	if sel.topology(idT4) {
		if r.bins.Ghostunnel != "" {
			c, s, entry, err := r.ghostunnelPair(target)
			if err != nil {
				return nil, err
			}
			tops = append(tops, &topology{name: T4, id: idT4, entry: allKinds(entry), client: c, server: s})
		} else {
			notef("T4 skipped: no ghostunnel binary (make ghostunnel)")
		}
	}
	for _, h := range []struct {
		id, name string
		http     bool
	}{{idT5, T5, false}, {idT5h, T5h, true}} {
		if !sel.topology(h.id) {
			continue
		}
		if r.bins.HAProxy == "" {
			notef("%s skipped: no haproxy binary (apt-get install haproxy)", h.id)
			continue
		}
		c, s, entry, err := r.haproxyPair(target, h.http)
		if err != nil {
			return nil, err
		}
		t := &topology{name: h.name, id: h.id, entry: allKinds(entry), client: c, server: s}
		if h.http {
			// Like T3h: HTTP/1.1 from the client and to the app.
			t.entry = map[string]string{kindHTTP1: entry}
		}
		tops = append(tops, t)
	}
	return tops, nil
}

// fullHandshakePairs starts T3 pairs with resumption off, one per selected
// group, for the handshake scenario.
func (r *rig) fullHandshakePairs(target string, sel Selection) ([]*topology, error) {
	var tops []*topology
	for _, g := range kexGroups {
		if !sel.topology(g.id) {
			continue
		}
		t, err := r.credflowPair(g.topology, g.id+"-full", pairOpts{name: "t3full-" + g.name, extra: g.config, noResumption: true}, target, kindTCP)
		if err != nil {
			return nil, err
		}
		tops = append(tops, t)
	}
	return tops, nil
}
