package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"
	"time"

	"github.com/hugelgupf/p9/linux"
	"github.com/hugelgupf/p9/p9"

	"strata/fs"
)

type timeoutKey struct{}

// WithTimeout returns a context whose calls on a Tree bound each remote
// step by d instead of Options.Timeout: longer for a request the server
// takes its time to answer (an app invocation), shorter for a probe. A d
// of zero or less leaves Options.Timeout in force.
//
// d is the point past which the server counts as stuck and the connection
// is closed. A deadline of ctx that comes sooner ends only the caller's
// wait (see the package doc); so to give up on an answer at a deadline
// without breaking the link if the answer comes a little later, make d
// longer than the time left to the deadline.
func WithTimeout(ctx context.Context, d time.Duration) context.Context {
	return context.WithValue(ctx, timeoutKey{}, d)
}

// stepTimeout is the bound of a step made with ctx.
func stepTimeout(ctx context.Context, def time.Duration) time.Duration {
	if d, ok := ctx.Value(timeoutKey{}).(time.Duration); ok && d > 0 {
		return d
	}
	return def
}

// timeoutError is a timeout that fs.KindOf classifies as one.
type timeoutError string

func (e timeoutError) Error() string        { return string(e) }
func (e timeoutError) Timeout() bool        { return true }
func (e timeoutError) Is(target error) bool { return target == context.DeadlineExceeded }

// plan is how long a step may take.
type plan struct {
	// bound is the step's own limit: a server that has not answered by
	// then, and does not answer a probe either, is stuck, and the
	// connection is closed.
	bound time.Duration
	// deadline, if not zero, is the caller's deadline, sooner than the
	// bound: the caller stops waiting then, and the step runs on in the
	// background.
	deadline time.Time
	// probe marks a step that is itself a test of the link: at its bound
	// it is stuck, with no probe of its own.
	probe bool
}

func (s *link) plan(ctx context.Context) plan { return s.planFor(ctx, 0) }

// planFor is the plan of a step that moves n bytes of payload: its bound
// grows by the time they take at Options.MinRate, so that a slow link
// carries a large read or write instead of being taken for a stuck one.
func (s *link) planFor(ctx context.Context, n int) plan {
	p := plan{bound: stepTimeout(ctx, s.t.opts.Timeout)}
	if n > 0 {
		p.bound += time.Duration(n) * time.Second / time.Duration(s.t.opts.MinRate)
	}
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < p.bound {
		p.deadline = dl
	}
	return p
}

// detached reports whether the step may outlive its caller's wait, and so
// must not use the caller's memory.
func (p plan) detached() bool { return !p.deadline.IsZero() }

// Step states.
const (
	running int32 = iota
	answered
	stuck
)

// exec runs fn, one request and its answer, as a step on s under pl (see
// the package doc). on lists the fids fn uses that the caller may clunk
// once exec returns: their clunk waits for fn. If the caller stops
// waiting, drop releases what fn returns (a walked fid, say).
//
// fn must not write to anything the caller reads after exec returns an
// error: with a detached plan it may still run then.
//
// The link's watch keeps the time: it closes the link if the step is
// still unanswered at its bound, and wakes a detached caller at its
// deadline. An attached step runs fn on the caller's goroutine; only a
// detached one needs a goroutine of its own, to outlive the caller's
// wait.
func exec[T any](ctx context.Context, s *link, pl plan, op, path string, fn func() (T, error), drop func(T), on ...*fid) (T, error) {
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, s.t.err(op, path, fs.KindOf(err), err)
	}
	if s.dead.Load() {
		return zero, s.deadErr(op, path)
	}
	if !pl.detached() {
		st := s.watch.start(s, op, path, pl)
		v, err := fn()
		return finish(s, st, op, path, pl.bound, v, err, drop)
	}

	start := time.Now()
	for _, f := range on {
		f.hold()
	}
	st := s.watch.start(s, op, path, pl)
	var (
		v   T
		err error
	)
	go func() {
		v, err = fn()
		for _, f := range on {
			f.release()
		}
		if s.watch.deliver(st) {
			return // the caller takes it from here
		}
		if v, err := finish(s, st, op, path, pl.bound, v, err, drop); err == nil && drop != nil {
			drop(v)
		}
	}()
	if !s.watch.await(st) {
		return zero, s.t.err(op, path, fs.Timeout, fmt.Errorf("no answer within %v, the caller's deadline", pl.deadline.Sub(start).Round(time.Millisecond)))
	}
	return finish(s, st, op, path, pl.bound, v, err, drop)
}

// finish ends the step st, whose fn returned v and err: it makes the
// error of a failed step, and drops v if the step was stuck.
func finish[T any](s *link, st *inflight, op, path string, bound time.Duration, v T, err error, drop func(T)) (T, error) {
	var zero T
	if !s.watch.end(st) {
		if err == nil && drop != nil {
			drop(v)
		}
		return zero, s.t.err(op, path, fs.Timeout, fmt.Errorf("did not answer within %v", bound))
	}
	if err != nil {
		return zero, s.mapErr(op, path, err)
	}
	s.heard.Store(time.Now().UnixNano())
	return v, nil
}

func joinOp(op, path string) string {
	if path == "" {
		return op
	}
	return op + " " + path
}

// step runs fn as one step whose result is only its error.
func (s *link) step(ctx context.Context, op, path string, fn func() error, on ...*fid) error {
	_, err := exec(ctx, s, s.plan(ctx), op, path, func() (struct{}, error) { return struct{}{}, fn() }, nil, on...)
	return err
}

// mapErr turns what p9's client returns into an fs error: an errno from
// the server keeps its kind; anything else is a transport failure, which
// ends the link.
func (s *link) mapErr(op, path string, err error) error {
	if err == nil || err == io.EOF {
		return err
	}
	var le linux.Errno
	if errors.As(err, &le) {
		s.heard.Store(time.Now().UnixNano()) // an answer all the same
		errno := syscall.Errno(le)
		return s.t.err(op, path, fs.KindOf(errno), errno)
	}
	if !s.kill(err) {
		return s.deadErr(op, path)
	}
	return s.t.err(op, path, fs.Unavailable, fmt.Errorf("connection lost: %w", err))
}

// deadErr is the error of a call on a closed link: a Timeout if the
// server stopped answering, else Unavailable.
func (s *link) deadErr(op, path string) error {
	kind := fs.Unavailable
	if fs.KindOf(s.cause) == fs.Timeout {
		kind = fs.Timeout
	}
	return s.t.err(op, path, kind, fmt.Errorf("connection closed: %w", s.cause))
}

// fid is a fid this package walked. It counts the steps on it whose
// callers stopped waiting; a clunk waits for them, so that the fid number
// is not reused while a request naming it may still be sent.
type fid struct {
	p9.File
	mu   sync.Mutex
	busy int
	idle chan struct{} // made by quiet while busy; closed when busy drops to zero
}

func newFid(f p9.File) *fid { return &fid{File: f} }

func (f *fid) hold() {
	f.mu.Lock()
	f.busy++
	f.mu.Unlock()
}

func (f *fid) release() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.busy--
	if f.busy == 0 && f.idle != nil {
		close(f.idle)
		f.idle = nil
	}
}

// quiet returns nil if no step runs on f, else a channel closed when none
// does.
func (f *fid) quiet() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.busy == 0 {
		return nil
	}
	if f.idle == nil {
		f.idle = make(chan struct{})
	}
	return f.idle
}

// clunk drops a fid that was walked for one operation: now, or when the
// steps still running on it end.
func clunk(ctx context.Context, s *link, f *fid) {
	ctx = context.WithoutCancel(ctx)
	if ch := f.quiet(); ch != nil {
		go func() {
			<-ch
			s.step(ctx, "clunk", "", f.Close)
		}()
		return
	}
	s.step(ctx, "clunk", "", f.Close)
}
