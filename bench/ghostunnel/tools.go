//go:build tools

// Package ghostunnel pins the ghostunnel binary built by `make ghostunnel`.
package ghostunnel

import _ "github.com/ghostunnel/ghostunnel"
