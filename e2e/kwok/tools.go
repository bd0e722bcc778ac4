//go:build tools

// Package tools pins the KWOK main package that ../build.sh builds.
package tools

import (
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
