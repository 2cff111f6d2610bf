# CredentialFlow. `make test` and `make demo` are all a newcomer needs: they
# install what is missing (Debian packages, Go modules, the SPIRE binaries
# built from source into bin/) and then run.

GO      ?= go
BIN     := bin
# The Go toolchain. The machine's Go 1.26.8 has known vulnerabilities in
# crypto/tls, crypto/x509 and net/http (govulncheck: GO-2026-6607, -6809,
# -6603...); go1.27.3 is the newer toolchain the module proxy serves here,
# and the go command fetches it (76 MB, once per machine).
export GOTOOLCHAIN := go1.27.3
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/credflow/credflow/internal/app.version=$(VERSION)

# Debian packages the build and the tests use: gcc for SPIRE's cgo SQLite,
# openssl and curl for interoperability tests, iproute2, iptables and tcpdump
# for the network-namespace tests of transparent capture, PostgreSQL for the
# SPIRE failover test (F15), Redis for the global rate limits and
# the revocation list.
APT_PACKAGES := gcc libc6-dev openssl curl iproute2 iptables tcpdump postgresql redis-server ca-certificates
APT_COMMANDS := gcc openssl curl ip iptables tcpdump pg_ctlcluster redis-server

SPIRE_BINS := $(BIN)/spire-server $(BIN)/spire-agent
GHOSTUNNEL := $(BIN)/ghostunnel
HYDRA := $(BIN)/hydra
RATELIMIT := $(BIN)/ratelimit
JAEGER := $(BIN)/jaeger

.PHONY: all build bench-bin spire hydra ratelimit jaeger ghostunnel deps bench-deps test test-short stress lint vulncheck fuzz-short soak bench bench-short bench-pq bench-quic bench-egress bench-limits bench-observe demo clean

all: build

## build: the credflow binary, into bin/credflow.
build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/credflow ./cmd/credflow

## bench-bin: the benchmark harness, a module of its own (bench/go.mod), into bin/credflow-bench.
bench-bin:
	$(GO) -C bench build -o $(abspath $(BIN))/credflow-bench ./cmd/credflow-bench

## spire: spire-server and spire-agent v1.13.3, built from the module pinned
## in deploy/spire (go.mod/go.sum), reused while present.
spire: $(SPIRE_BINS)

$(SPIRE_BINS) &: deploy/spire/go.mod deploy/spire/go.sum | deps
	@echo "building SPIRE from deploy/spire (10-15 minutes the first time on two cores)"
	cd deploy/spire && $(GO) build -o ../../$(BIN)/ \
		github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent
	@touch $(SPIRE_BINS)

## hydra: Ory Hydra v2.3.0, the OAuth 2.0 authorization server of the credential-injection tests
## and the demo, built from the module pinned in deploy/hydra (with SQLite, for its in-memory
## database: cgo), reused while present.
hydra: $(HYDRA)

$(HYDRA): deploy/hydra/go.mod deploy/hydra/go.sum | deps
	@echo "building Hydra from deploy/hydra (several minutes the first time on two cores)"
	cd deploy/hydra && CGO_ENABLED=1 $(GO) build -trimpath -tags sqlite,json1 -o ../../$(BIN)/hydra github.com/ory/hydra/v2
	@touch $(HYDRA)

## ratelimit: Envoy's rate limit service (github.com/envoyproxy/ratelimit), the global rate
## limit service of the global-limit tests and the demo, built from the module pinned in
## deploy/ratelimit, reused while present. It keeps its counters in Redis (Debian's redis-server).
ratelimit: $(RATELIMIT)

$(RATELIMIT): deploy/ratelimit/go.mod deploy/ratelimit/go.sum | deps
	@echo "building the rate limit service from deploy/ratelimit (about a minute the first time)"
	cd deploy/ratelimit && $(GO) build -trimpath -o ../../$(BIN)/ratelimit github.com/envoyproxy/ratelimit/src/service_cmd
	@touch $(RATELIMIT)

## jaeger: Jaeger v1.75.0 (github.com/jaegertracing/jaeger/cmd/jaeger), the tracing backend of the
## tracing tests (in-memory storage, OTLP receiver, query API), built from the module pinned in
## deploy/jaeger, reused while present. A long build: several minutes the first time on two cores.
jaeger: $(JAEGER)

$(JAEGER): deploy/jaeger/go.mod deploy/jaeger/go.sum | deps
	@echo "building Jaeger from deploy/jaeger (several minutes the first time on two cores)"
	cd deploy/jaeger && $(GO) build -trimpath -o ../../$(BIN)/jaeger github.com/jaegertracing/jaeger/cmd/jaeger
	@touch $(JAEGER)

## deps: Debian packages, installed only when a command is missing.
deps:
	@missing=; for c in $(APT_COMMANDS); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages (missing:$$missing)"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(APT_PACKAGES); \
	fi
	$(GO) mod download
	$(GO) -C bench mod download

## test: everything — lint, unit and real-SPIRE tests (with the race detector), a short fuzz run.
test: deps spire hydra ratelimit jaeger lint
	$(GO) test -race -count=1 -timeout 30m ./...
	$(GO) test -count=1 ./proxy/rawio # its raw system calls: under -race it makes them through syscall
	$(GO) -C bench test -race -count=1 ./...
	cd deploy/k8s && $(GO) test -count=1 ./...
	$(MAKE) --no-print-directory fuzz-short

## test-short: the fast loop, as any user: no root, no SPIRE, no long storms (go test -short).
## Tests that need root or the real SPIRE skip here; under CI=true such a skip is a failure.
test-short:
	$(GO) test -short -count=1 ./...
	$(GO) -C bench test -short -count=1 ./...

## stress: make test STRESS_RUNS times in a row with stress-ng --cpu 2 running beside it; the
## suite must not depend on an idle machine.
STRESS_RUNS ?= 5
stress: deps spire
	@command -v stress-ng >/dev/null 2>&1 || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends stress-ng; }
	@stress-ng --cpu 2 --quiet & sp=$$!; trap "kill $$sp" EXIT; \
	for i in $$(seq $(STRESS_RUNS)); do \
		echo "stress: run $$i of $(STRESS_RUNS)"; start=$$(date +%s); \
		$(MAKE) --no-print-directory test || { echo "stress: run $$i failed"; exit 1; }; \
		echo "stress: run $$i passed in $$(( $$(date +%s) - start )) s"; \
	done

## soak: the long forms of the reliability cases (docs/RELIABILITY.md): the storms at full size
## (CREDFLOW_SOAK=1), then the L7 soak for SOAK_DURATION on real SPIRE, whose figures go to
## docs/soak/soak.{md,jsonl}. make test runs the same tests in their short forms.
SOAK_DURATION ?= 30m
soak: deps spire
	CREDFLOW_SOAK=1 $(GO) test -count=1 -timeout 30m -run '$(SOAK_PROXY_TESTS)' ./proxy/
	CREDFLOW_SOAK=1 $(GO) test -count=1 -timeout 30m -run '^TestE2EAgentOutage$$' ./e2e/
	CREDFLOW_SOAK_DURATION=$(SOAK_DURATION) CREDFLOW_SOAK_OUT=$(CURDIR)/docs/soak \
		$(GO) test -count=1 -timeout 90m -run '^TestE2ESoak$$' -v ./e2e/

SOAK_PROXY_TESTS := ^(TestHandshakeStorm|TestAbuse.*|TestQUICAbuse|TestMetricSeriesBounded)$$

## vulncheck: govulncheck over the three modules (the sidecar, bench, deploy/k8s), against the Go
## vulnerability database built from the golang.org/x/vulndb version pinned in tools/vulncheck
## (vuln.go.dev is not reachable here);
## then over the image's binary (-mode=binary): built as the Dockerfile builds it, with the
## toolchain above (TestToolchainPinned keeps the two equal), so the scan covers the standard
## library the image ships.
vulncheck: | deps
	cd tools/vulncheck && $(GO) build -o $(abspath $(BIN))/govulncheck golang.org/x/vuln/cmd/govulncheck && \
		$(GO) build -o $(abspath $(BIN))/indexdb golang.org/x/vulndb/cmd/indexdb
	rm -rf $(BIN)/vulndb && $(BIN)/indexdb -vulns "$$(cd tools/vulncheck && $(GO) list -m -f '{{.Dir}}' golang.org/x/vulndb)/data/osv" -out $(BIN)/vulndb
	$(BIN)/govulncheck -db "file://$(abspath $(BIN))/vulndb" ./...
	cd bench && $(abspath $(BIN))/govulncheck -db "file://$(abspath $(BIN))/vulndb" ./...
	cd deploy/k8s && $(abspath $(BIN))/govulncheck -db "file://$(abspath $(BIN))/vulndb" ./...
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-w $(LDFLAGS)" -o $(BIN)/credflow-image ./cmd/credflow
	$(GO) version $(BIN)/credflow-image
	$(BIN)/govulncheck -db "file://$(abspath $(BIN))/vulndb" -mode=binary $(BIN)/credflow-image

## lint: gofmt and go vet.
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './bin/*')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) -C bench vet ./...

## fuzz-short: each fuzz target for a fixed number of executions (seeds in testdata/fuzz).
## Counts, not durations: with a -fuzztime duration, Go 1.26's fuzzing coordinator can report
## "context deadline exceeded" at the deadline without any failing input (golang/go#75804).
FUZZ_TARGETS := ./audit:FuzzRecordJSON ./register:FuzzParse ./internal/config:FuzzParse ./proxy/authz:FuzzPattern \
	./pqc/mldsatoken:FuzzVerify ./proxy/route:FuzzNormalize ./proxy/route:FuzzAllows ./agent:FuzzValidateJWTSVID \
	./token/txn:FuzzVerify ./token/edge:FuzzValidate ./proxy/quicmux:FuzzReadStreamHeader ./proxy/mtls:FuzzVerify \
	./internal/inject:FuzzPatch ./token/edge:FuzzJWKS ./internal/joseheader:FuzzParse \
	./token/exchange:FuzzLoopbackHost ./internal/peercred:FuzzParseAnswer ./proxy/revoke:FuzzParseFile
FUZZ_EXECS ?= 50000

fuzz-short:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; fn=$${t##*:}; \
		echo "fuzz $$pkg $$fn ($(FUZZ_EXECS) executions)"; \
		$(GO) test -run='^$$' -fuzz="^$$fn$$" -fuzztime=$(FUZZ_EXECS)x $$pkg; \
	done

## ghostunnel: ghostunnel v1.8.4, the T4 benchmark peer, built from the module pinned in
## bench/ghostunnel (its landlock dependency is not in the checksum database here). It needs cgo.
ghostunnel: $(GHOSTUNNEL)

$(GHOSTUNNEL): bench/ghostunnel/go.mod bench/ghostunnel/go.sum | deps
	cd bench/ghostunnel && GONOSUMDB=github.com/landlock-lsm CGO_ENABLED=1 $(GO) build -trimpath -o ../../$(BIN)/ghostunnel \
		github.com/ghostunnel/ghostunnel
	@touch $(GHOSTUNNEL)

## bench-deps: HAProxy (the T5 and T5h peer) from Debian, when missing.
bench-deps: deps
	@command -v haproxy >/dev/null 2>&1 || { echo "installing haproxy"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends haproxy; }

## bench: the mesh benchmark, full profile (T0-T5h; bulk, RPC latency, ping-pong, handshakes,
## connection scale, rotation; about 12 minutes here), then a short profiled pass of the T3 and T3h
## pairs (about 2 minutes; profiles in bin/bench-profiles) whose top costs the results name;
## writes bench/results/mesh.{md,jsonl} and the charts.
bench: build bench-bin ghostunnel bench-deps
	$(BIN)/credflow-bench -scenario mesh -profile full -profile-pass $(BIN)/bench-profiles -out bench/results

## bench-short: the same scenarios, short (about 2 minutes), then the egress and limits scenarios, short (about 40 s);
## prints the tables, writes under bin/.
## BENCH_ARGS narrows or profiles it, e.g. BENCH_ARGS='-topologies T3h,T3h-jwt,T5h -scenarios rpc-http1
## -profile-dir bin/profiles' (topology ids T0 T1 T2 T3 T3q T3h T3h-grpc T3h-jwt T4 T5 T5h; scenario ids
## bulk ping-pong handshake rpc-http1 rpc-grpc rotation scale; bench/README.md).
BENCH_ARGS ?=
bench-short: build bench-bin ghostunnel bench-deps hydra
	$(BIN)/credflow-bench -scenario mesh -profile short -out $(BIN)/bench-short $(BENCH_ARGS)
	$(BIN)/credflow-bench -scenario egress,limits -repeats 2 -egress-time 2s -limits-time 2s -out $(BIN)/bench-short

## bench-egress: credential injection's CPU cost on an egress listener (a cached OAuth token from
## Ory Hydra against no injection, same run, two sidecars swapping roles) and cold-cache token
## fetches, about 1.5 minutes;
## writes bench/results/egress.{md,jsonl}.
bench-egress: build bench-bin hydra
	$(BIN)/credflow-bench -scenario egress -repeats 6 -out bench/results

## bench-pq: handshake cost per key-exchange group, KEM primitives, token signatures;
## writes bench/results/{kex,kem,tokens}.{md,jsonl}.
bench-pq: bench-bin
	$(BIN)/credflow-bench -scenario pq -n 300 -repeats 5 -out bench/results

## bench-quic: TCP against QUIC between sidecars (T3, T3q, with T0); writes bench/results/transport.{md,jsonl}.
bench-quic: bench-bin
	$(BIN)/credflow-bench -scenario transport -n 300 -repeats 5 -out bench/results

## bench-limits: rate limits' CPU cost on an inbound listener (every limit on against none, same
## run, two sidecars swapping roles) and a limiter's memory with 100,000 identities, about 1.5
## minutes; writes bench/results/limits.{md,jsonl}.
bench-limits: build bench-bin
	$(BIN)/credflow-bench -scenario limits -repeats 6 -out bench/results

## bench-observe: the audit trail's and tracing's CPU cost per request, paired as bench-limits, with a
## real Jaeger (issue 18's targets: at most 1.05 and 1.10).
bench-observe: build bench-bin jaeger
	$(BIN)/credflow-bench -scenario observe -repeats 6 -out bench/results

## demo: see README.
demo: build spire hydra
	$(GO) run ./cmd/credflow-demo

clean:
	rm -rf $(BIN)
