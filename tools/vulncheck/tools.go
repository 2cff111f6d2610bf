//go:build tools

// Package vulncheck pins the tools `make vulncheck` builds.
package vulncheck

import (
	_ "golang.org/x/vuln/cmd/govulncheck"
	_ "golang.org/x/vulndb/cmd/indexdb"
)
