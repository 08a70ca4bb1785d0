package fuse

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"strata/fs"
)

// call is one call into the tree, shared by the request that waits for it
// and the goroutine that runs it.
type call struct {
	mu        sync.Mutex
	finished  bool // f has returned
	abandoned bool // the request stopped waiting
	result    chan error
}

// do runs f, a call into the tree for the operation op on the path that
// where returns, under the mount's bounds: f's context is cancelled when
// ctx is (the kernel interrupted the request) and expires after the
// mount's timeout. do returns the errno for f's error, having logged it,
// and whether f finished. If f has not returned shortly after its
// deadline, do returns ETIMEDOUT and false, and f is left running; if it
// then succeeds, undo (if not nil) is called to release what it made. A
// panic in f is recovered and becomes EIO.
func (m *Mounted) do(ctx context.Context, op string, where func() string, f func(context.Context) error, undo func()) (syscall.Errno, bool) {
	tctx, cancel := context.WithTimeout(ctx, m.timeout)
	return m.wait(tctx, cancel, op, where, f, undo)
}

// doBehind is do for a call that no request waits for (a read ahead, a
// write behind): f's context has no deadline, so that the tree bounds
// the call by its own rules (a remote tree by its step bound) and does
// not take the mount's bound for a caller about to give up; the mount
// stops waiting at its bound as for any call.
func (m *Mounted) doBehind(op string, where func() string, f func(context.Context) error) (syscall.Errno, bool) {
	tctx, cancel := context.WithCancel(context.Background())
	return m.wait(tctx, cancel, op, where, f, nil)
}

// wait runs f with tctx, which cancel ends, for do and doBehind.
func (m *Mounted) wait(tctx context.Context, cancel context.CancelFunc, op string, where func() string, f func(context.Context) error, undo func()) (syscall.Errno, bool) {
	c := &call{result: make(chan error, 1)}
	go func() {
		defer cancel()
		err := m.guard(tctx, op, where, f)
		c.mu.Lock()
		c.finished = true
		abandoned := c.abandoned
		c.mu.Unlock()
		if !abandoned {
			c.result <- err
			return
		}
		m.running.Add(-1)
		m.log.Info("fuse: a call left running has returned", "op", op, "path", show(where()), "err", errString(err))
		if err == nil && undo != nil {
			undo()
		}
	}()

	timer := time.NewTimer(m.timeout + abandonGrace)
	defer timer.Stop()
	select {
	case err := <-c.result:
		return m.errno(op, where, err), true
	case <-timer.C:
	}
	c.mu.Lock()
	if c.finished {
		c.mu.Unlock()
		return m.errno(op, where, <-c.result), true
	}
	c.abandoned = true
	c.mu.Unlock()
	m.running.Add(1)
	m.log.Warn("fuse: the tree did not answer in time; the call is left running and the request fails",
		"op", op, "path", show(where()), "timeout", m.timeout, "errno", syscall.ETIMEDOUT.Error())
	return syscall.ETIMEDOUT, false
}

// guard runs f and turns a panic into an IO error.
func (m *Mounted) guard(ctx context.Context, op string, where func() string, f func(context.Context) error) (err error) {
	defer func() {
		if v := recover(); v != nil {
			m.log.Error("fuse: panic in the tree", "op", op, "path", show(where()), "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			err = &fs.Error{Op: op, Path: where(), Kind: fs.IO, Err: fmt.Errorf("panic: %v", v)}
		}
	}()
	return f(ctx)
}

// errno returns the errno for err (0 for nil) and logs the failure.
func (m *Mounted) errno(op string, where func() string, err error) syscall.Errno {
	if err == nil {
		return 0
	}
	e := fs.ErrnoOf(err)
	level := slog.LevelWarn
	switch fs.KindOf(err) {
	case fs.NotExist, fs.Exist, fs.NotEmpty, fs.Canceled:
		level = slog.LevelDebug
	}
	m.log.Log(context.Background(), level, "fuse: "+op+" failed", "op", op, "path", show(where()), "errno", e.Error(), "err", err.Error())
	return e
}

// refuse logs and returns errno for a request the mount refuses itself.
func (m *Mounted) refuse(op string, where func() string, errno syscall.Errno, why string) syscall.Errno {
	m.log.Debug("fuse: "+op+" refused", "op", op, "path", show(where()), "errno", errno.Error(), "err", why)
	return errno
}

func show(p string) string { return "/" + p }

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}
