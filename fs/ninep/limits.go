package ninep

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"strata/fs"
)

// Per-connection caps, besides MaxOutstanding and MaxFids9P.
const (
	// MaxFidsL caps the fids one 9P2000.L connection may hold at once
	// (a walked fid's ancestors count while it holds them).
	MaxFidsL = 4096
	// DefaultMaxOpen is how many files one connection may have open at
	// once, in either dialect, unless Server.MaxOpen says otherwise.
	DefaultMaxOpen = 1024
)

func (s *Server) maxOpen() int64 {
	if s.MaxOpen <= 0 {
		return DefaultMaxOpen
	}
	return int64(s.MaxOpen)
}

// openFiles counts a connection's open handles against its cap.
type openFiles struct {
	max int64
	n   atomic.Int64
}

// acquire takes a place for a handle about to be opened at path, or says
// why there is none. A place that is not used must be given back with
// release; a handle made in it is wrapped with hold.
func (o *openFiles) acquire(op, path string) error {
	if o.n.Add(1) > o.max {
		o.n.Add(-1)
		return &fs.Error{Op: op, Path: path, Kind: fs.Busy, Err: fmt.Errorf("too many open files: a connection may have %d open at once; close some", o.max)}
	}
	return nil
}

func (o *openFiles) release() { o.n.Add(-1) }

// hold wraps h so that closing it gives its place back, once.
func (o *openFiles) hold(h fs.Handle) fs.Handle {
	return &countedHandle{Handle: h, o: o}
}

// countedHandle is a Handle that holds a place in its connection's count.
type countedHandle struct {
	fs.Handle
	o    *openFiles
	once sync.Once
}

func (h *countedHandle) Close(ctx context.Context) error {
	err := h.Handle.Close(ctx)
	h.once.Do(h.o.release)
	return err
}

// Abort closes the handle without acknowledging what was written through
// it, when its tree can (fs.Aborter), else closes it.
func (h *countedHandle) Abort(ctx context.Context) error {
	err := abandon(ctx, h.Handle)
	h.once.Do(h.o.release)
	return err
}

// abandon closes h for a client that went away without closing it: the
// client never heard that its writes were acknowledged, so a pending
// atomic rewrite is discarded rather than committed half written.
func abandon(ctx context.Context, h fs.Handle) error {
	if a, ok := h.(fs.Aborter); ok {
		return a.Abort(ctx)
	}
	return h.Close(ctx)
}
