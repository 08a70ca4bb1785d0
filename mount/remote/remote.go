// Package remote shows a tree served over 9P2000.L (by strata's fs/ninep,
// or any server that speaks p9's dialect) as a local fs.Dir, through the
// client of github.com/hugelgupf/p9.
//
// Nodes are paths, not fids: a Dir or File remembers where it is, and each
// operation walks there from the attach fid, does its work and clunks what
// it walked. Only an open Handle holds a fid. This costs a round trip or
// two per operation, but a node stays valid across a reconnection and no
// fid is ever left for a finalizer to clunk.
//
// p9's client has no timeouts, so every round trip runs under a deadline
// (Options.Timeout): if the server does not answer in time the connection
// is closed, which fails every call waiting on it, and the caller gets an
// fs.Error of Kind Timeout that names the server. The next operation dials
// again.
//
// Not done yet: redialing waits for no backoff (a dead server costs each
// operation one dial, bounded by the timeout); a Handle does not survive a
// reconnection (its calls fail with the error that ended the connection,
// and the caller reopens);
// there is no keepalive to notice a dead link before a call does.
package remote

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hugelgupf/p9/linux"
	"github.com/hugelgupf/p9/p9"

	"strata/fs"
)

// Defaults.
const (
	DefaultTimeout = 5 * time.Second
	// DefaultMsize is the message size asked for: p9's own limit.
	DefaultMsize = 4 << 20
	// minMsize leaves room for a useful payload after p9's largest
	// fixed message part.
	minMsize = 4096
)

// Options configure a Tree. The zero value is usable.
type Options struct {
	// Timeout bounds each remote step: dialing, the version and attach
	// exchange, and every request. DefaultTimeout if zero.
	Timeout time.Duration
	// Msize is the largest message to ask for. The server's answer is
	// used if it is smaller. DefaultMsize if zero.
	Msize uint32
	// Aname is the tree to attach to on the server ("" for its root).
	Aname string
	// Dial opens the transport (an encrypted channel, say). By default
	// it is a net.Dialer's DialContext.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Log receives connection events; nil discards them.
	Log *slog.Logger
}

// Tree is a remote tree. Its methods and its nodes' methods may be called
// from many goroutines.
type Tree struct {
	network, addr string
	opts          Options
	log           *slog.Logger

	mu     sync.Mutex
	cur    *link // nil until dialed, or after a failure
	closed bool
}

// Dial connects to the 9P2000.L server at addr and attaches. The returned
// Tree reconnects by itself when its connection fails.
func Dial(ctx context.Context, network, addr string, opts Options) (*Tree, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Msize == 0 {
		opts.Msize = DefaultMsize
	}
	if opts.Msize < minMsize {
		return nil, &fs.Error{Op: "dial", Path: addr, Kind: fs.Invalid, Err: fmt.Errorf("msize %d is below %d", opts.Msize, minMsize)}
	}
	if opts.Dial == nil {
		var d net.Dialer
		opts.Dial = d.DialContext
	}
	t := &Tree{network: network, addr: addr, opts: opts, log: opts.Log}
	if t.log == nil {
		t.log = slog.New(slog.DiscardHandler)
	}
	if _, err := t.connect(ctx); err != nil {
		return nil, err
	}
	return t, nil
}

// Root returns the root of the remote tree.
func (t *Tree) Root() fs.Dir { return &dir{node{t: t}} }

// Close closes the connection. Handles still open fail from then on.
func (t *Tree) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	if t.cur != nil {
		t.cur.kill(errTreeClosed)
		t.cur = nil
	}
	return nil
}

var errTreeClosed = errors.New("remote tree closed")

// link is one connection: a p9 client and its attach fid.
type link struct {
	t       *Tree
	conn    net.Conn
	client  *p9.Client
	root    p9.File
	payload int // bytes per Tread or Twrite

	dead  atomic.Bool
	once  sync.Once
	cause error
}

// connect returns the live link, dialing a new one if there is none.
func (t *Tree) connect(ctx context.Context) (*link, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, &fs.Error{Op: "dial", Path: t.addr, Kind: fs.BadHandle, Err: errTreeClosed}
	}
	if t.cur != nil && !t.cur.dead.Load() {
		return t.cur, nil
	}
	s, err := t.dial(ctx)
	if err != nil {
		t.log.Info("9P2000.L dial failed", "addr", t.addr, "err", err)
		return nil, err
	}
	t.log.Debug("9P2000.L connected", "addr", t.addr, "payload", s.payload)
	t.cur = s
	return s, nil
}

// use returns the live link for an operation, naming the operation in
// the error if a new one cannot be had.
func (t *Tree) use(ctx context.Context, op, path string) (*link, error) {
	s, err := t.connect(ctx)
	if err != nil {
		return nil, &fs.Error{Op: op, Path: path, Kind: fs.KindOf(err), Err: fmt.Errorf("reconnecting: %w", err)}
	}
	return s, nil
}

// dial connects, negotiates the version and msize, and attaches, each step
// within the timeout.
func (t *Tree) dial(ctx context.Context) (*link, error) {
	dctx, cancel := context.WithTimeout(ctx, t.opts.Timeout)
	defer cancel()
	conn, err := t.opts.Dial(dctx, t.network, t.addr)
	if err != nil {
		kind := fs.Unavailable
		if dctx.Err() != nil && ctx.Err() == nil {
			kind = fs.Timeout
		}
		return nil, &fs.Error{Op: "dial", Path: t.addr, Kind: kind, Err: err}
	}
	s := &link{t: t, conn: conn}

	// p9.NewClient uses its own msize whatever the server answers, so
	// ask first and give it the smaller of the two. p9's client then
	// sends its own Tversion, which starts the connection afresh.
	var msize uint32
	err = s.step(ctx, "version", "", func() error {
		var err error
		msize, err = exchangeVersion(conn, t.opts.Msize)
		return err
	})
	if err != nil {
		s.kill(err)
		return nil, err
	}
	err = s.step(ctx, "version", "", func() error {
		c, err := p9.NewClient(conn, p9.WithMessageSize(msize))
		s.client = c
		return err
	})
	if err != nil {
		s.kill(err)
		return nil, err
	}
	err = s.step(ctx, "attach", "", func() error {
		r, err := s.client.Attach(t.opts.Aname)
		s.root = r
		return err
	})
	if err != nil {
		s.kill(err)
		return nil, err
	}
	// p9's client splits reads and writes at msize less its largest
	// fixed message part (153 bytes), rounded down to 512: stay at or
	// below that, so that one step is one round trip.
	s.payload = int(msize-256) &^ 511
	return s, nil
}

// exchangeVersion sends Tversion "9P2000.L" and returns the server's msize.
func exchangeVersion(conn net.Conn, msize uint32) (uint32, error) {
	const version = "9P2000.L"
	b := make([]byte, 13+len(version))
	binary.LittleEndian.PutUint32(b[0:], uint32(len(b)))
	b[4] = 100 // Tversion
	binary.LittleEndian.PutUint16(b[5:], 0xffff)
	binary.LittleEndian.PutUint32(b[7:], msize)
	binary.LittleEndian.PutUint16(b[11:], uint16(len(version)))
	copy(b[13:], version)
	if _, err := conn.Write(b); err != nil {
		return 0, err
	}
	var hdr [7]byte
	if _, err := io.ReadFull(conn, hdr[:]); err != nil {
		return 0, err
	}
	size := binary.LittleEndian.Uint32(hdr[:])
	if size < 7 || size > 7+4+2+64 {
		return 0, fmt.Errorf("Rversion of %d bytes", size)
	}
	body := make([]byte, size-7)
	if _, err := io.ReadFull(conn, body); err != nil {
		return 0, err
	}
	switch hdr[4] {
	case 101: // Rversion
	case 7: // Rlerror
		if len(body) >= 4 {
			return 0, linux.Errno(binary.LittleEndian.Uint32(body))
		}
		return 0, errors.New("malformed Rlerror")
	default:
		return 0, fmt.Errorf("answer of type %d to Tversion", hdr[4])
	}
	if len(body) < 6 || int(binary.LittleEndian.Uint16(body[4:]))+6 != len(body) {
		return 0, errors.New("malformed Rversion")
	}
	if v := string(body[6:]); v != version {
		return 0, &fs.Error{Op: "version", Kind: fs.Unsupported, Err: fmt.Errorf("server speaks %q, not %s", v, version)}
	}
	got := binary.LittleEndian.Uint32(body)
	if got < minMsize {
		return 0, fmt.Errorf("server msize %d is below %d", got, minMsize)
	}
	return min(got, msize), nil
}

// kill closes the connection once; every call waiting on it fails. It
// reports whether cause is the reason the link ended.
func (s *link) kill(cause error) bool {
	first := false
	s.once.Do(func() {
		first = true
		s.cause = cause
		s.dead.Store(true)
		s.conn.Close()
		s.t.log.Info("9P2000.L connection closed", "addr", s.t.addr, "why", cause)
	})
	return first
}

// step runs one remote step, fn, under the timeout. If the server does
// not answer in time the connection is closed, which makes fn fail at
// once, and the error is a Timeout naming the server.
//
// A step that has begun is waited for: p9's client cannot flush a request,
// and the request's buffers are the caller's. So ctx is checked before a
// step, and a step's own bound is the timeout.
func (s *link) step(ctx context.Context, op, path string, fn func() error) error {
	if err := ctx.Err(); err != nil {
		return &fs.Error{Op: op, Path: path, Kind: fs.KindOf(err), Err: err}
	}
	if s.dead.Load() {
		return s.deadErr(op, path)
	}
	var timedOut *fs.Error
	var mu sync.Mutex
	timer := time.AfterFunc(s.t.opts.Timeout, func() {
		err := &fs.Error{Op: op, Path: path, Kind: fs.Timeout, Err: fmt.Errorf("%s did not answer within %v", s.t.addr, s.t.opts.Timeout)}
		mu.Lock()
		timedOut = err
		mu.Unlock()
		s.kill(err)
	})
	err := fn()
	timer.Stop()
	if err == nil {
		return nil
	}
	mu.Lock()
	defer mu.Unlock()
	if timedOut != nil {
		return timedOut
	}
	return s.mapErr(op, path, err)
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
		errno := syscall.Errno(le)
		return &fs.Error{Op: op, Path: path, Kind: fs.KindOf(errno), Err: errno}
	}
	if !s.kill(err) {
		return s.deadErr(op, path)
	}
	var fe *fs.Error
	if errors.As(err, &fe) {
		return err
	}
	return &fs.Error{Op: op, Path: path, Kind: fs.Unavailable, Err: fmt.Errorf("%s: %w", s.t.addr, err)}
}

// deadErr is the error of a call on a closed link: a Timeout if the
// server stopped answering, else Unavailable.
func (s *link) deadErr(op, path string) error {
	kind := fs.Unavailable
	if fs.KindOf(s.cause) == fs.Timeout {
		kind = fs.Timeout
	}
	return &fs.Error{Op: op, Path: path, Kind: kind, Err: fmt.Errorf("connection to %s closed: %w", s.t.addr, s.cause)}
}
