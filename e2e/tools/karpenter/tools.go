//go:build tools

// Package tools pins the main package the test bed builds: Karpenter with its kwok
// cloud provider (the autoscaler of the test bed's backfill scenarios).
package tools

import _ "sigs.k8s.io/karpenter/kwok"
