//go:build tools

// Package spire pins the SPIRE binaries built by `make spire`.
package spire

import (
	_ "github.com/spiffe/spire/cmd/spire-agent"
	_ "github.com/spiffe/spire/cmd/spire-server"
)
