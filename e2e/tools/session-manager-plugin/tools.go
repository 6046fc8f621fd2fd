//go:build tools

// Package tools pins the plugin's main package, so `go mod tidy -e` (-e: the plugin's
// own tests import a module the proxy does not serve) resolves everything it imports.
// e2e/lib/build-tools.sh builds it; tests/fake_ssm.rs runs it against the fake Session
// Manager endpoint.
package tools

import _ "github.com/aws/session-manager-plugin/src/sessionmanagerplugin-main"
