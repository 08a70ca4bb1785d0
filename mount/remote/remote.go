// Package remote shows a tree served over 9P2000.L (by strata's fs/ninep,
// or any server that speaks p9's dialect) as a local fs.Dir, through the
// client of github.com/hugelgupf/p9. A tier mounts its parent with it.
//
// Nodes are paths, not fids: a Dir or File remembers where it is, and each
// operation walks there from the attach fid, does its work and clunks what
// it walked. Only an open Handle holds a fid. This costs a round trip or
// two per operation, but a node stays valid across a reconnection and no
// fid is ever left for a finalizer to clunk.
//
// # Errors
//
// Every error is an *fs.Error whose Op starts with the tier's label, the
// Options.Name and the address ("cloud (10.0.0.1:5640): walk apps/x: ..."),
// so that a message read several tiers away says which link failed. Kind
// Timeout means a deadline passed; Unavailable means the tier cannot be
// reached or the connection broke.
//
// # Deadlines
//
// p9's client has no timeouts, so every round trip (a step) runs under a
// bound: Options.Timeout, or the duration given to WithTimeout for the
// calls made with that context, plus, for a read or write, the time its
// bytes take at Options.MinRate. A step that has begun is waited for up
// to its bound; canceling the context does not cut it short (p9's client
// cannot flush a request).
//
// A step unanswered at its bound may be stuck, or the server may be
// waiting on something of its own (a tier on its parent, whose steps have
// the same bound and started a little later). So before the connection
// is given up, the link is tested: if the server has answered anything
// in the last bound, or answers a probe (a getattr of the attach fid)
// within half a bound, it is alive, and the step gets another bound, up
// to maxExtensions times. Otherwise the step is stuck: the connection is
// closed, which fails every call waiting on it, and the caller gets a
// Timeout. A dead server is thus found within one and a half bounds, and
// a slow parent does not cost its child the link that everyone else's
// calls share.
//
// A context deadline that comes sooner than the bound also ends the wait,
// with a Timeout, but it is the caller's limit, not proof that the server
// is stuck: the step is left to finish in the background (into buffers of
// its own, so the caller's are never touched afterwards), the fids it uses
// are clunked only after it ends, and the connection is closed only if
// the step is still unanswered at its own bound. So one impatient caller
// does not break the link, and the open Handles, of everyone else.
//
// # Reconnecting
//
// When the connection fails, the next call dials again: when the Tree has
// several addresses, the one that answered last first, then the others. Only one goroutine
// dials at a time; calls arriving meanwhile wait for that dial's result,
// each within its own context and bound. After a failed dial, calls fail
// at once for a backoff window that grows from Options.MinBackoff to
// Options.MaxBackoff (doubling, with jitter) and starts again from the
// minimum after a successful connection. Their error says when the next
// attempt will be made and why the last one failed; its Kind is Timeout if
// that dial timed out, Unavailable otherwise. Nothing redials in the
// background: a call does. A Handle does not survive a reconnection: its
// calls fail with the error that ended its connection, and the caller
// opens the file again.
//
// With Options.Keepalive set, an idle connection is probed (a getattr of
// the attach fid) every interval; a probe that fails or times out closes
// the connection, so that the next call redials at once instead of finding
// out the hard way. Tree.State reports the link for status pages.
package remote

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
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
	DefaultTimeout    = 5 * time.Second
	DefaultMinBackoff = 100 * time.Millisecond
	// DefaultMinRate is 4 KiB/s: a 128 KiB step may take 32 s more than
	// the timeout, a 4 KiB one 1 s more.
	DefaultMinRate    = 4 << 10
	DefaultMaxBackoff = 5 * time.Second
	// DefaultMsize is the message size asked for: p9's own limit.
	DefaultMsize = 4 << 20
	// minMsize leaves room for a useful payload after p9's largest
	// fixed message part.
	minMsize = 4096
)

// Options configure a Tree. The zero value is usable.
type Options struct {
	// Name is the name of the tier behind the tree ("cloud",
	// "appedge/g1"). Every error names it, with the address; if it is
	// empty the address alone names the tier.
	Name string
	// Timeout bounds each remote step: a request and its answer. It
	// also bounds a whole dial: connecting, the version and the attach
	// exchange. DefaultTimeout if zero. WithTimeout overrides it for
	// the steps of one call.
	Timeout time.Duration
	// MinRate is the slowest transfer, in bytes per second, that is not
	// taken for a stuck link: a read or write step of n bytes may take
	// Timeout plus n/MinRate. DefaultMinRate if zero.
	MinRate int64
	// MinBackoff and MaxBackoff bound the time calls fail at once after
	// a failed dial, before the next dial. DefaultMinBackoff and
	// DefaultMaxBackoff if zero.
	MinBackoff, MaxBackoff time.Duration
	// Keepalive, if positive, is how long the connection may stay idle
	// before it is probed. Zero turns probing off.
	Keepalive time.Duration
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

// LinkState describes a Tree's connection, for status pages.
type LinkState struct {
	Name      string // Options.Name
	Addr      string
	Connected bool
	// LastError is why the last connection ended or the last dial
	// failed; empty if neither has happened.
	LastError string
	// Since is when Connected last changed (or when the Tree was made).
	Since time.Time
	// NextAttempt is when a call may dial again after a failed dial;
	// zero when there is no backoff.
	NextAttempt time.Time
	// Reconnects counts the successful connections after the first.
	Reconnects int
}

// Tree is a remote tree. Its methods and its nodes' methods may be called
// from many goroutines.
type Tree struct {
	network string
	addrs   []string     // the server's addresses, tried in turn
	pref    atomic.Int32 // the address dialed first: the last that answered
	label   atomic.Pointer[string]
	opts    Options
	log     *slog.Logger
	invalid error           // what is wrong with opts, if anything
	ctx     context.Context // ended by Close
	stop    context.CancelFunc
	wg      sync.WaitGroup // dials and keepalives

	mu        sync.Mutex
	cur       *link    // the last link made; dead after a failure
	dialing   *dialing // the dial under way, if any
	closed    bool
	failures  int       // dials failed in a row
	next      time.Time // no dial before this, after a failure
	lastErr   error     // the last dial failure or link end
	lastKind  fs.Kind   // the kind of the last dial failure
	connected bool      // as State reports it: set and cleared with since
	since     time.Time
	connects  int
}

// dialing is one dial that callers wait for.
type dialing struct {
	done     chan struct{} // closed when s or err is set
	deadline time.Time     // when the dial gives up
	s        *link
	err      error
}

// New returns a Tree for the 9P2000.L server at addr without connecting:
// the first call dials, so a tier starts even while its parent is down.
// addr may list several addresses, comma-separated, of servers that serve
// the same tree (the edges of a group, the nodes of a cloud): a dial
// tries them in turn, beginning with the one that answered last (at
// first, one chosen at random, so that children spread over them).
// The Tree reconnects by itself when its connection fails. Options that
// make no sense (an Msize below 4096, a MaxBackoff below MinBackoff) make
// every call fail with Invalid.
func New(network, addr string, opts Options) *Tree {
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.MinRate <= 0 {
		opts.MinRate = DefaultMinRate
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = DefaultMinBackoff
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = max(DefaultMaxBackoff, opts.MinBackoff)
	}
	if opts.Msize == 0 {
		opts.Msize = DefaultMsize
	}
	if opts.Dial == nil {
		var d net.Dialer
		opts.Dial = d.DialContext
	}
	t := &Tree{network: network, addrs: strings.Split(addr, ","), opts: opts, log: opts.Log, since: time.Now()}
	if len(t.addrs) > 1 {
		// Children of one parent spread over its addresses.
		t.pref.Store(int32(rand.IntN(len(t.addrs))))
	}
	t.setLabel(int(t.pref.Load()))
	if t.log == nil {
		t.log = slog.New(slog.DiscardHandler)
	}
	switch {
	case opts.Msize < minMsize:
		t.invalid = fmt.Errorf("msize %d is below %d", opts.Msize, minMsize)
	case opts.MaxBackoff < opts.MinBackoff:
		t.invalid = fmt.Errorf("MaxBackoff %v is below MinBackoff %v", opts.MaxBackoff, opts.MinBackoff)
	case slices.Contains(t.addrs, ""):
		t.invalid = fmt.Errorf("an empty address in %q", addr)
	}
	t.ctx, t.stop = context.WithCancel(context.Background())
	return t
}

// setLabel names the tier by its address i in errors and logs.
func (t *Tree) setLabel(i int) {
	l := t.addrs[i]
	if t.opts.Name != "" {
		l = t.opts.Name + " (" + l + ")"
	}
	t.label.Store(&l)
}

// name is the tier's label: "name (addr)", or addr, with the address in
// use (or to be tried first).
func (t *Tree) name() string { return *t.label.Load() }

// Dial connects to the 9P2000.L server at addr and attaches: New, then a
// first connection, whose failure is returned.
func Dial(ctx context.Context, network, addr string, opts Options) (*Tree, error) {
	t := New(network, addr, opts)
	if _, err := t.use(ctx, "dial", ""); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

// Root returns the root of the remote tree.
func (t *Tree) Root() fs.Dir { return &dir{node{t: t}} }

// State reports the connection.
func (t *Tree) State() LinkState {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := LinkState{
		Name:       t.opts.Name,
		Addr:       t.addrs[t.pref.Load()],
		Connected:  t.connected,
		Since:      t.since,
		Reconnects: max(0, t.connects-1),
	}
	if t.lastErr != nil {
		st.LastError = t.lastErr.Error()
	}
	if !st.Connected && t.failures > 0 {
		st.NextAttempt = t.next
	}
	return st
}

// Close closes the connection and stops the keepalive. Handles still open
// fail from then on, and so does every call.
func (t *Tree) Close() error {
	t.mu.Lock()
	t.closed = true
	s := t.cur
	t.mu.Unlock()
	t.stop()
	if s != nil {
		s.kill(errTreeClosed)
	}
	t.wg.Wait()
	return nil
}

var errTreeClosed = errors.New("remote tree closed")

// err builds the error of a call: its Op names the tier.
func (t *Tree) err(op, path string, kind fs.Kind, cause error) *fs.Error {
	return &fs.Error{Op: t.name() + ": " + op, Path: path, Kind: kind, Err: cause}
}

// relabel names the tier in an error made here without contacting it (a
// bad name, a closed handle).
func (t *Tree) relabel(err error) error {
	var fe *fs.Error
	if !errors.As(err, &fe) {
		return err
	}
	c := *fe
	c.Op = t.name() + ": " + c.Op
	return &c
}

// connect returns the live link, dialing if there is none.
func (t *Tree) connect(ctx context.Context) (*link, error) { return t.use(ctx, "dial", "") }

// use returns the live link for an operation, dialing if there is none.
// The error names the operation.
func (t *Tree) use(ctx context.Context, op, path string) (*link, error) {
	if err := ctx.Err(); err != nil {
		return nil, t.err(op, path, fs.KindOf(err), err)
	}
	if t.invalid != nil {
		return nil, t.err(op, path, fs.Invalid, t.invalid)
	}
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil, t.err(op, path, fs.BadHandle, errTreeClosed)
	}
	if s := t.cur; s != nil && !s.dead.Load() {
		t.mu.Unlock()
		return s, nil
	}
	d := t.dialing
	if d == nil {
		if wait := time.Until(t.next); t.failures > 0 && wait > 0 {
			kind := fs.Unavailable
			if t.lastKind == fs.Timeout {
				kind = fs.Timeout
			}
			err := t.err(op, path, kind, fmt.Errorf("unreachable, next attempt in %v: %w", roundUp(wait), t.lastErr))
			t.mu.Unlock()
			return nil, err
		}
		d = &dialing{done: make(chan struct{}), deadline: time.Now().Add(t.opts.Timeout)}
		t.dialing = d
		t.wg.Add(1)
		go t.redial(d)
	}
	t.mu.Unlock()

	// Wait within the bound of a step, and the caller's deadline. A dial
	// that ends before then is waited for; the backstop only guards
	// against an Options.Dial that ignores its context.
	start := time.Now()
	limit := start.Add(stepTimeout(ctx, t.opts.Timeout))
	if dl, ok := ctx.Deadline(); ok && dl.Before(limit) {
		limit = dl
	}
	if !limit.Before(d.deadline) {
		limit = d.deadline.Add(time.Second)
	}
	wait := time.NewTimer(time.Until(limit))
	defer wait.Stop()
	select {
	case <-d.done:
	case <-ctx.Done():
		return nil, t.err(op, path, fs.KindOf(ctx.Err()), fmt.Errorf("waiting for a connection: %w", ctx.Err()))
	case <-wait.C:
		return nil, t.err(op, path, fs.Timeout, fmt.Errorf("no connection within %v", limit.Sub(start).Round(time.Millisecond)))
	}
	if d.err != nil {
		return nil, t.err(op, path, dialKind(d.err), fmt.Errorf("connecting: %w", d.err))
	}
	return d.s, nil
}

func roundUp(d time.Duration) time.Duration {
	if d < time.Millisecond {
		return time.Millisecond
	}
	return d.Round(time.Millisecond)
}

// dialKind classifies a failed dial: Timeout, Unavailable, or a kind the
// server's answer gave (Unsupported for a wrong version, say).
func dialKind(err error) fs.Kind {
	switch k := fs.KindOf(err); k {
	case fs.Other, fs.IO, fs.Canceled:
		return fs.Unavailable
	default:
		return k
	}
}

// redial makes one dial for d's waiters and records its outcome.
func (t *Tree) redial(d *dialing) {
	defer t.wg.Done()
	s, err := t.dial()
	t.mu.Lock()
	t.dialing = nil
	now := time.Now()
	switch {
	case t.closed:
		if s != nil {
			defer s.kill(errTreeClosed)
		}
		s, err = nil, errTreeClosed
	case err != nil:
		t.failures++
		t.next = now.Add(t.backoff(t.failures))
		t.lastErr, t.lastKind = err, dialKind(err)
		t.log.Info("9P2000.L dial failed", "tier", t.name(), "err", err, "retry", t.next.Sub(now).Round(time.Millisecond))
	default:
		t.failures, t.next = 0, time.Time{}
		t.connects++
		t.connected, t.since = true, now
		t.cur = s
		s.installed.Store(true)
		t.log.Info("9P2000.L connected", "tier", t.name(), "payload", s.payload, "reconnects", t.connects-1)
		if t.opts.Keepalive > 0 {
			t.wg.Add(1)
			go s.keepalive(t.opts.Keepalive)
		}
	}
	d.s, d.err = s, err
	close(d.done)
	t.mu.Unlock()
}

// backoff is the window after the nth failed dial in a row: MinBackoff
// doubled n-1 times, up to MaxBackoff, give or take a fifth at random,
// within [MinBackoff, MaxBackoff].
func (t *Tree) backoff(n int) time.Duration {
	lo, hi := t.opts.MinBackoff, t.opts.MaxBackoff
	d := lo
	for i := 1; i < n && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	d = time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
	return min(max(d, lo), hi)
}

// linkDown records the end of the current link s.
func (t *Tree) linkDown(s *link, cause error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cur == s {
		t.connected = false
		t.since = time.Now()
		t.lastErr = cause
	}
}

// link is one connection: a p9 client and its attach fid.
type link struct {
	t       *Tree
	conn    net.Conn
	client  *p9.Client
	root    p9.File
	payload int // bytes per Tread or Twrite

	watch     watch        // the steps in flight
	heard     atomic.Int64 // unix nanoseconds of the last answer
	probing   atomic.Bool  // a probe is out (see watch.fire)
	ping      func() error // the probe, if not a getattr of root (tests)
	installed atomic.Bool  // the Tree's current link (not a dial's)
	done      chan struct{}
	dead      atomic.Bool
	once      sync.Once
	cause     error
}

// dial connects to one of the server's addresses, the one that answered
// last first, then the others in turn; the first that answers becomes the
// preferred one. Each has its own timeout.
func (t *Tree) dial() (*link, error) {
	first := int(t.pref.Load())
	if len(t.addrs) == 1 {
		return t.dialAddr(t.addrs[0])
	}
	var errs []error
	for k := range t.addrs {
		i := (first + k) % len(t.addrs)
		s, err := t.dialAddr(t.addrs[i])
		if err == nil {
			if i != first {
				t.log.Info("9P2000.L moving to another address", "tier", t.name(), "to", t.addrs[i])
				t.pref.Store(int32(i))
				t.setLabel(i)
			}
			return s, nil
		}
		if errors.Is(err, errTreeClosed) {
			return nil, err
		}
		errs = append(errs, &addrError{t.addrs[i], err})
	}
	return nil, errors.Join(errs...)
}

// addrError is a dial's failure at one of several addresses.
type addrError struct {
	addr string
	err  error
}

func (e *addrError) Error() string { return e.addr + ": " + e.err.Error() }
func (e *addrError) Unwrap() error { return e.err }

// dialAddr connects to addr, negotiates the version and msize, and
// attaches, all within the timeout. Closing the Tree abandons it.
func (t *Tree) dialAddr(addr string) (*link, error) {
	ctx, cancel := context.WithTimeout(t.ctx, t.opts.Timeout)
	defer cancel()
	// fail says why the dial failed, in an error that fs.KindOf
	// classifies: a timeout, the server's errno, a network error.
	fail := func(op string, err error) error {
		switch {
		case t.ctx.Err() != nil:
			return errTreeClosed
		case ctx.Err() != nil:
			return timeoutError(fmt.Sprintf("%s: no answer within %v", op, t.opts.Timeout))
		}
		var le linux.Errno
		if errors.As(err, &le) {
			err = syscall.Errno(le)
		}
		var fe *fs.Error
		if errors.As(err, &fe) {
			return err
		}
		return fmt.Errorf("%s: %w", op, err)
	}
	conn, err := t.opts.Dial(ctx, t.network, addr)
	if err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Op == "dial" {
			return nil, fail("dial", oe.Err) // the address is in the label
		}
		return nil, fail("dial", err)
	}
	// Until the link is shared, the deadline simply closes the
	// connection, which ends whatever exchange is under way.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	s := &link{t: t, conn: conn, done: make(chan struct{})}
	failed := func(op string, err error) (*link, error) {
		stop()
		conn.Close()
		return nil, fail(op, err)
	}

	// p9.NewClient uses its own msize whatever the server answers, so
	// ask first and give it the smaller of the two. p9's client then
	// sends its own Tversion, which starts the connection afresh. It
	// talks through a wire: one write per request, buffered reads.
	msize, err := exchangeVersion(conn, t.opts.Msize)
	if err != nil {
		return failed("version", err)
	}
	if s.client, err = p9.NewClient(newWire(conn), p9.WithMessageSize(msize)); err != nil {
		return failed("version", err)
	}
	if s.root, err = s.client.Attach(t.opts.Aname); err != nil {
		return failed("attach", err)
	}
	if !stop() {
		return failed("attach", ctx.Err())
	}
	// p9's client splits reads and writes at msize less its largest
	// fixed message part (153 bytes), rounded down to 512: stay at or
	// below that, so that one step is one round trip.
	s.payload = int(msize-256) &^ 511
	s.heard.Store(time.Now().UnixNano())
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
		if s.installed.Load() {
			// Before the close, so that a call that fails because of it
			// finds the state already changed.
			s.t.linkDown(s, cause)
			s.t.log.Info("9P2000.L connection closed", "tier", s.t.name(), "why", cause)
		}
		s.conn.Close()
		close(s.done)
	})
	return first
}

// getattrRoot asks the server about the attach fid: the cheapest answer
// there is, for probes.
func (s *link) getattrRoot() (struct{}, error) {
	if s.ping != nil {
		return struct{}{}, s.ping()
	}
	_, _, _, err := s.root.GetAttr(p9.AttrMask{Mode: true})
	return struct{}{}, err
}

// probe tests the link when a step is late (late says which): unless a
// probe is already out, a getattr of the attach fid bounded by bound. If
// it goes unanswered, the watch finds the probe stuck and closes the link.
func (s *link) probe(late string, bound time.Duration) {
	if !s.probing.CompareAndSwap(false, true) {
		return
	}
	s.t.wg.Add(1)
	go func() {
		defer s.t.wg.Done()
		defer s.probing.Store(false)
		exec(s.t.ctx, s, plan{bound: bound, probe: true}, "probe of the link after "+late, "", s.getattrRoot, nil)
	}()
}

// keepalive probes the link whenever it has heard nothing for every,
// until the link ends. A probe that fails ends the link.
func (s *link) keepalive(every time.Duration) {
	defer s.t.wg.Done()
	timer := time.NewTimer(every)
	defer timer.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-timer.C:
		}
		if idle := time.Since(time.Unix(0, s.heard.Load())); idle < every {
			timer.Reset(every - idle)
			continue
		}
		_, err := exec(s.t.ctx, s, plan{bound: s.t.opts.Timeout, probe: true}, "keepalive", "", s.getattrRoot, nil)
		if err != nil {
			if s.t.ctx.Err() == nil {
				s.kill(err)
			}
			return
		}
		timer.Reset(every)
	}
}
