# The credflow sidecar image: a static binary on distroless, run as non-root.
#   docker build -t credflow:dev --build-arg VERSION=$(git describe --tags --always) .
# The build flags are the ones TestStaticBuild (cmd/credflow) checks. The Go
# toolchain is go.mod's toolchain line and the Makefile's GOTOOLCHAIN
# (TestToolchainPinned keeps the three equal), and `make vulncheck` scans a
# binary built with these flags and that toolchain (govulncheck -mode=binary).
#
# Base images are pinned by digest; a tag can move, a digest cannot. The
# build stage is golang:1.27.2-bookworm, the newest Go image for which a
# published digest was found when this was written (no registry could be
# queried then: confirm both digests with crane before a release);
# GOTOOLCHAIN then makes its go
# command fetch go1.27.3 from the module proxy, verified against the Go
# checksum database, before it builds anything. To update:
#   crane digest golang:<version>-bookworm
#   crane digest gcr.io/distroless/static-debian12:nonroot
FROM golang:1.27.2-bookworm@sha256:5cf287a799e6b94384bad13d16b14904c531f51ba65792237e122ce42b392f61 AS build
# The official images set GOTOOLCHAIN=local, which ignores go.mod's toolchain line.
ENV GOTOOLCHAIN=go1.27.3
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download && go version
COPY . .
ARG VERSION=dev
# -w drops the debug information but keeps the symbol table (-s would drop
# it): with it, govulncheck -mode=binary tells which vulnerable functions
# the binary contains; without it, it can only list every advisory of
# every module in it. It costs 2 MB.
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags "-w -X github.com/credflow/credflow/internal/app.version=${VERSION}" \
      -o /out/credflow ./cmd/credflow

FROM gcr.io/distroless/static-debian12:nonroot@sha256:afa5c872c891853ca7fcf1f12c3edb23f7eeef36189728842dd51042ff57f7ab
COPY --from=build /out/credflow /usr/local/bin/credflow
# 1337 is the uid `credflow init -proxy-uid` exempts from capture.
USER 1337:1337
ENTRYPOINT ["/usr/local/bin/credflow"]
CMD ["run", "-c", "/etc/credflow/credflow.yaml"]
