// Package ninetest checks a 9P server with third-party clients, in the
// spirit of testing/fstest.TestFS: each checker runs one client through
// an everyday scenario against the server at an address and returns one
// error listing every problem found, or nil.
//
//   - Plan9Client: the 9fans.net client (9P2000).
//   - LinuxClient: the hugelgupf/p9 client (9P2000.L).
//   - Diod: Debian's diodcat and diodls (libnpclient, 9P2000.L).
//
// Run them against every tree the 9P front end serves, so that each keeps
// the same promises to the same clients. Hooks in the options let a caller
// look at the tree behind the server between steps.
package ninetest

import (
	"fmt"
	"strings"
)

// report collects the problems of one check.
type report struct {
	check string
	errs  []string
}

func (r *report) errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

// hook reports the error of a caller's hook after step, if any.
func (r *report) hook(step string, err error) {
	if err != nil {
		r.errorf("after %s: %v", step, err)
	}
}

func (r *report) err() error {
	if len(r.errs) == 0 {
		return nil
	}
	return fmt.Errorf("ninetest: %s: %d problem(s):\n  %s", r.check, len(r.errs), strings.Join(r.errs, "\n  "))
}

// differ describes got, which should be want.
func differ(got, want []byte) string {
	if len(got) <= 64 && len(want) <= 64 {
		return fmt.Sprintf("%q, want %q", got, want)
	}
	if len(got) != len(want) {
		return fmt.Sprintf("%d bytes, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			return fmt.Sprintf("%d bytes as wanted, but they differ from byte %d on", len(got), i)
		}
	}
	return fmt.Sprintf("%d bytes as wanted", len(got))
}
