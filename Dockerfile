# The credflow sidecar image: a static binary on distroless, run as non-root.
#   docker build -t credflow:dev --build-arg VERSION=$(git describe --tags --always) .
# The build flags are the ones TestStaticBuild (cmd/credflow) checks.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X github.com/credflow/credflow/internal/app.version=${VERSION}" \
      -o /out/credflow ./cmd/credflow

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/credflow /usr/local/bin/credflow
# 1337 is the uid `credflow init -proxy-uid` exempts from capture.
USER 1337:1337
ENTRYPOINT ["/usr/local/bin/credflow"]
CMD ["run", "-c", "/etc/credflow/credflow.yaml"]
