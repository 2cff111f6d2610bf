// Package e2e_test holds the end-to-end tests: the credflow binary (or its
// command line in-process) against a real SPIRE server and agent, pods as
// network namespaces where a test needs them, and the interop peers
// (ghostunnel, curl, openssl) where a test compares behaviour. They use the
// servers `make spire ghostunnel` builds into bin/; -short and a non-root
// user skip them (internal/testenv), and CI=true turns those skips into
// failures.
package e2e_test
