package remote

import (
	"strings"

	"strata/fs"
)

// File returns the file at the slash-separated path p without a round
// trip: opening it walks there and opens in one go, which saves a walk per
// element for callers that know the path (a tier forwarding a call).
func (t *Tree) File(p string) fs.File {
	return &file{node{t: t, path: strings.Trim(p, "/")}}
}

// Dir returns the directory at the slash-separated path p without a
// round trip; a Lookup in it walks from the root to the child in one go.
func (t *Tree) Dir(p string) fs.Dir {
	return &dir{node{t: t, path: strings.Trim(p, "/")}}
}
