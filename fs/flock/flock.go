// Package flock holds a directory for one process at a time: an exclusive,
// non-blocking flock on its open file, released when the file is closed
// (or the process dies, so a killed owner never leaves it held).
package flock

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"strata/fs"
)

// Exclusive takes an exclusive lock on f. If another open file holds it,
// the error is a Busy *fs.Error saying that owner (e.g. "another store")
// uses the directory; the caller adds the op and path.
func Exclusive(f *os.File, owner string) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var lerr error
	if err := rc.Control(func(fd uintptr) {
		lerr = syscall.Flock(int(fd), syscall.LOCK_EX|syscall.LOCK_NB)
	}); err != nil {
		return err
	}
	if errors.Is(lerr, syscall.EWOULDBLOCK) {
		return &fs.Error{Kind: fs.Busy, Err: fmt.Errorf("directory in use by %s", owner)}
	}
	return lerr
}
