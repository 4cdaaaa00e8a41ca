//go:build tools

// Package tools pins the Kubernetes binaries that berth's tests run, built from
// source: kube-apiserver, kube-controller-manager and kubectl for the control
// plane; kube-scheduler, kubelet and kube-proxy for the real node.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
