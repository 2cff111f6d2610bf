// Package k8s holds the tests of CredentialFlow's Kubernetes manifests
// (base, overlays, examples, monitoring) and of the injector's patches.
package k8s
