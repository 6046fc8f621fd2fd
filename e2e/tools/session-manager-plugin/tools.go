//go:build tools

// Package tools pins the plugin's main package, so `go mod tidy -e` (-e: the plugin's
// own tests import a module the proxy does not serve) resolves everything it imports.
// build-tools.sh is to build it once the fake Session Manager endpoint it checks exists
// (issue 22; not wired in yet, so no cold build pays for it).
package tools

import _ "github.com/aws/session-manager-plugin/src/sessionmanagerplugin-main"
