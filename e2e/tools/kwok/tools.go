//go:build tools

// Package tools pins the main package the test bed builds.
package tools

import _ "sigs.k8s.io/kwok/cmd/kwok"
