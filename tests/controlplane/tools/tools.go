//go:build tools

// Package tools pins the Kubernetes control-plane binaries that berth's tests
// run: kube-apiserver, kube-controller-manager and kubectl, built from source.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
