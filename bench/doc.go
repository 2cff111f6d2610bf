// Package bench is CredentialFlow's benchmark harness. Every figure is
// measured on loopback in one run, with the baseline measured in the same
// run, repeated and reported as the median with its spread, and written with
// the environment it came from (hostenv.Environment).
//
// The harness is a module of its own (bench/go.mod), so that its plotting
// and profile libraries never enter the sidecar's module.
package bench
