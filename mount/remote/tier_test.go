package remote

import (
	"bytes"
	"context"
	"errors"
	"io"
	iofs "io/fs"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"strata/fs"
	"strata/fs/memfs"
	"strata/fs/ninep"
)

// Tests of the tree as a tier's parent mount: errors that name the tier,
// backoff, reconnection, deadlines and keepalive. Bounds on durations are
// generous: they test behaviour, not timing.

// server serves a tree on a fixed loopback address and can be stopped
// and started again there, like a tier that restarts.
type server struct {
	t    testing.TB
	root fs.Dir
	addr string
	mu   sync.Mutex
	s    *ninep.Server
}

func newServer(t testing.TB, root fs.Dir) *server {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sv := &server{t: t, root: root, addr: ln.Addr().String()}
	sv.serve(ln)
	t.Cleanup(sv.stop)
	return sv
}

func (sv *server) serve(ln net.Listener) {
	s := ninep.NewServer(sv.root, nil)
	go s.Serve(ctx, ln)
	sv.mu.Lock()
	sv.s = s
	sv.mu.Unlock()
}

func (sv *server) start() {
	ln, err := net.Listen("tcp", sv.addr)
	if err != nil {
		sv.t.Fatalf("listening again on %s: %v", sv.addr, err)
	}
	sv.serve(ln)
}

func (sv *server) stop() {
	sv.mu.Lock()
	s := sv.s
	sv.s = nil
	sv.mu.Unlock()
	if s != nil {
		c, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		s.Shutdown(c)
	}
}

// refusedAddr is a loopback address where nothing listens.
func refusedAddr(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// dialer counts the dials made through it, and may make each slow.
type dialer struct {
	delay  time.Duration
	writes atomic.Int64 // on the connections it made
	mu     sync.Mutex
	at     []time.Time
}

func (d *dialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d.mu.Lock()
	d.at = append(d.at, time.Now())
	d.mu.Unlock()
	if d.delay > 0 {
		select {
		case <-time.After(d.delay):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	var nd net.Dialer
	c, err := nd.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return countingConn{c, &d.writes}, nil
}

func (d *dialer) dials() []time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]time.Time(nil), d.at...)
}

type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c countingConn) Write(p []byte) (int, error) {
	c.n.Add(1)
	return c.Conn.Write(p)
}

func newTree(t testing.TB, addr string, opts Options) *Tree {
	t.Helper()
	tr := New("tcp", addr, opts)
	t.Cleanup(func() { tr.Close() })
	return tr
}

func wantPrefix(t testing.TB, what string, err error, prefix string) {
	t.Helper()
	if err == nil || !strings.HasPrefix(err.Error(), prefix) {
		t.Errorf("%s: got %v, want an error starting %q", what, err, prefix)
	}
}

// TestErrorNamesTier: every error leads with the tier's name and address,
// whatever failed, and stays an *fs.Error of the right kind.
func TestErrorNamesTier(t *testing.T) {
	root := memfs.New()
	put(t, root, "f", []byte("data"))
	p := newProxy(t, serve(t, root))
	tr := dial(t, p.addr(), Options{Name: "appedge/g1", Timeout: 200 * time.Millisecond})
	label := "appedge/g1 (" + p.addr() + "): "

	_, err := tr.Root().Lookup(ctx, "missing")
	wantKind(t, "lookup missing", err, fs.NotExist)
	wantPrefix(t, "lookup missing", err, label+"lookup missing: ")
	if !errors.Is(err, iofs.ErrNotExist) {
		t.Errorf("lookup missing: %v is not fs.ErrNotExist", err)
	}
	_, err = tr.Root().Lookup(ctx, "a/b")
	wantKind(t, "lookup a/b", err, fs.Invalid)
	wantPrefix(t, "lookup a/b", err, label+"lookup ")

	p.freeze()
	_, err = tr.Root().Lookup(ctx, "f")
	wantKind(t, "lookup on a silent server", err, fs.Timeout)
	wantPrefix(t, "lookup on a silent server", err, label+"lookup f: ")
	var fe *fs.Error
	if errors.As(err, &fe) && (fe.Path != "f" || !strings.HasSuffix(fe.Op, "lookup")) {
		t.Errorf("op %q, path %q; want lookup and f", fe.Op, fe.Path)
	}

	// Without a name, the address names the tier.
	addr := refusedAddr(t)
	_, err = Dial(ctx, "tcp", addr, Options{Timeout: 200 * time.Millisecond})
	wantKind(t, "dial a closed port", err, fs.Unavailable)
	wantPrefix(t, "dial a closed port", err, addr+": dial: ")
}

// TestBackoff: while the server is down, calls fail at once with
// Unavailable, at most one dial is made per backoff window, and the
// window grows up to MaxBackoff.
func TestBackoff(t *testing.T) {
	const minB, maxB = 40 * time.Millisecond, 320 * time.Millisecond
	addr := refusedAddr(t)
	var d dialer
	tr := newTree(t, addr, Options{Name: "cloud", Timeout: time.Second, MinBackoff: minB, MaxBackoff: maxB, Dial: d.dial})
	label := "cloud (" + addr + "): "
	start := time.Now()
	calls, fast := 0, 0
	for i := 0; i < 2000 && time.Since(start) < 1600*time.Millisecond; i++ {
		t0 := time.Now()
		_, err := tr.Root().Stat(ctx)
		if took := time.Since(t0); took > 200*time.Millisecond {
			t.Errorf("call %d took %v", i, took)
		}
		wantKind(t, "stat", err, fs.Unavailable)
		wantPrefix(t, "stat", err, label+"stat: ")
		if err != nil && !strings.Contains(err.Error(), "refused") {
			t.Errorf("call %d: %v; want the dial's error", i, err)
		}
		if err != nil && strings.Contains(err.Error(), "unreachable, next attempt in ") {
			fast++
		}
		calls++
		time.Sleep(2 * time.Millisecond)
	}
	at := d.dials()
	t.Logf("%d calls, %d dials", calls, len(at))
	if fast+len(at) != calls {
		t.Errorf("%d calls: %d dials and %d failed in a backoff window", calls, len(at), fast)
	}
	if len(at) < 4 || len(at) > 12 {
		t.Fatalf("%d dials in 1.6s; want between 4 and 12", len(at))
	}
	var gaps []time.Duration
	for i := 1; i < len(at); i++ {
		gaps = append(gaps, at[i].Sub(at[i-1]))
	}
	t.Logf("gaps between dials: %v", gaps)
	for i, g := range gaps {
		window := min(maxB, minB<<i)
		if low := window * 8 / 10; g < low {
			t.Errorf("dial %d came %v after the one before; the window was at least %v", i+1, g, low)
		}
	}
	if last := gaps[len(gaps)-1]; last < 2*gaps[0] {
		t.Errorf("the backoff did not grow: first gap %v, last %v", gaps[0], last)
	}
	st := tr.State()
	if st.Connected || !strings.Contains(st.LastError, "refused") || st.Addr != addr || st.Name != "cloud" {
		t.Errorf("state %+v", st)
	}
	if st.NextAttempt.IsZero() || time.Until(st.NextAttempt) > maxB {
		t.Errorf("next attempt at %v, %v from now", st.NextAttempt, time.Until(st.NextAttempt))
	}
}

// TestServerBack: a server that goes away and comes back on its address
// is reconnected to by the same Tree, and the backoff starts afresh.
func TestServerBack(t *testing.T) {
	const minB = 20 * time.Millisecond
	root := memfs.New()
	put(t, root, "f", []byte("data"))
	sv := newServer(t, root)
	tr := dial(t, sv.addr, Options{Name: "cloud", Timeout: time.Second, MinBackoff: minB, MaxBackoff: 100 * time.Millisecond})
	if got := get(t, tr.Root(), "f"); string(got) != "data" {
		t.Fatalf("read %q", got)
	}

	sv.stop()
	for i := range 3 {
		_, err := tr.Root().Stat(ctx)
		wantKind(t, "stat while the server is down", err, fs.Unavailable)
		if i == 0 && tr.State().Connected {
			t.Error("connected after a failed call")
		}
	}
	sv.start()
	var err error
	for i := 0; i < 300; i++ {
		if _, err = tr.Root().Stat(ctx); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("not reconnected: %v", err)
	}
	if got := get(t, tr.Root(), "f"); string(got) != "data" {
		t.Errorf("after reconnecting: %q", got)
	}
	st := tr.State()
	if !st.Connected || st.Reconnects != 1 || !st.NextAttempt.IsZero() || time.Since(st.Since) > 5*time.Second {
		t.Errorf("state after reconnecting: %+v", st)
	}

	// The backoff starts again from MinBackoff.
	sv.stop()
	for range 3 {
		tr.Root().Stat(ctx)
	}
	st = tr.State()
	if wait := time.Until(st.NextAttempt); st.Connected || wait > minB*12/10 {
		t.Errorf("after a new failure: %+v, next attempt in %v; want within %v", st, wait, minB*12/10)
	}
}

// TestSilentTier: against a server that stopped answering, every call
// fails within the timeout (and some slack) with a Timeout, whether it
// finds the connection open, redials or falls in a backoff window.
func TestSilentTier(t *testing.T) {
	const timeout = 200 * time.Millisecond
	const bound = timeout + 400*time.Millisecond
	root := memfs.New()
	put(t, root, "f", []byte("data"))
	p := newProxy(t, serve(t, root))
	tr := dial(t, p.addr(), Options{Name: "edge", Timeout: timeout, MinBackoff: 50 * time.Millisecond, MaxBackoff: 100 * time.Millisecond})
	p.freeze()
	calls := []func() error{
		func() error { _, err := tr.Root().Stat(ctx); return err },
		func() error { _, err := tr.Root().Lookup(ctx, "f"); return err },
		func() error { _, err := tr.Root().ReadDir(ctx); return err },
	}
	for i := range 12 {
		start := time.Now()
		err := calls[i%len(calls)]()
		if d := time.Since(start); d > bound {
			t.Errorf("call %d took %v", i, d)
		}
		wantKind(t, "call on a silent server", err, fs.Timeout)
		wantPrefix(t, "call on a silent server", err, "edge ("+p.addr()+"): ")
		time.Sleep(time.Duration(i%4) * 40 * time.Millisecond)
	}
}

// slowDir is a memfs tree where looking up "slow" takes delay, and the
// file "slowfile" answers reads after delay.
type slowDir struct {
	fs.Dir
	delay time.Duration
}

func (d slowDir) Lookup(ctx context.Context, name string) (fs.Node, error) {
	n, err := d.Dir.Lookup(ctx, name)
	switch name {
	case "slow":
		time.Sleep(d.delay)
	case "slowfile":
		if f, ok := n.(fs.File); ok {
			return slowFile{f, d.delay}, nil
		}
	}
	return n, err
}

type slowFile struct {
	fs.File
	delay time.Duration
}

func (f slowFile) Open(ctx context.Context, flag fs.Flag) (fs.Handle, error) {
	h, err := f.File.Open(ctx, flag)
	return slowHandle{h, f.delay}, err
}

type slowHandle struct {
	fs.Handle
	delay time.Duration
}

func (h slowHandle) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	time.Sleep(h.delay)
	return h.Handle.ReadAt(ctx, p, off)
}

func slowTree(t testing.TB, delay time.Duration) fs.Dir {
	root := memfs.New()
	put(t, root, "slow", []byte("slow"))
	put(t, root, "slowfile", []byte("slow data"))
	put(t, root, "f", []byte("fast"))
	return slowDir{root, delay}
}

func timed(f func() error) (time.Duration, error) {
	start := time.Now()
	err := f()
	return time.Since(start), err
}

// TestWithTimeout: WithTimeout extends and shortens the bound of the
// steps made with its context; a step past its own bound is stuck, and
// ends the connection.
func TestWithTimeout(t *testing.T) {
	const delay = 300 * time.Millisecond
	addr := serve(t, slowTree(t, delay))
	tr := dial(t, addr, Options{Name: "cloud", Timeout: 100 * time.Millisecond})
	root := tr.Root()
	lookup := func(c context.Context, name string) func() error {
		return func() error { _, err := root.Lookup(c, name); return err }
	}

	// Extended: the slow step is waited for.
	if d, err := timed(lookup(WithTimeout(ctx, 2*time.Second), "slow")); err != nil {
		t.Errorf("lookup slow with 2s: %v after %v", err, d)
	}
	// The default bound is too short for it.
	d, err := timed(lookup(ctx, "slow"))
	wantKind(t, "lookup slow with the default 100ms", err, fs.Timeout)
	wantPrefix(t, "lookup slow", err, "cloud ("+addr+"): lookup slow: ")
	if d > delay {
		t.Errorf("lookup slow with 100ms took %v", d)
	}
	if tr.State().Connected {
		t.Error("a step stuck past its bound left the connection open")
	}
	// The next call reconnects at once (a lost link starts no backoff).
	if _, err := root.Stat(ctx); err != nil {
		t.Errorf("stat after the timeout: %v", err)
	}
	// Shortened, on the fast path and the slow one.
	if _, err := timed(lookup(WithTimeout(ctx, 50*time.Millisecond), "f")); err != nil {
		t.Errorf("lookup f with 50ms: %v", err)
	}
	d, err = timed(lookup(WithTimeout(ctx, 30*time.Millisecond), "slow"))
	wantKind(t, "lookup slow with 30ms", err, fs.Timeout)
	if d > 90*time.Millisecond+200*time.Millisecond {
		t.Errorf("lookup slow with 30ms took %v", d)
	}
	if st := tr.State(); st.Reconnects != 1 {
		t.Errorf("reconnects %d, want 1", st.Reconnects)
	}
}

// TestCallerDeadline: a context deadline sooner than the step's bound
// ends the caller's wait with a Timeout naming the tier, but the step
// runs on in the background: the connection stays open, the caller's
// buffer is not written afterwards, and the handle still works.
func TestCallerDeadline(t *testing.T) {
	const delay = 300 * time.Millisecond
	addr := serve(t, slowTree(t, delay))
	var dl dialer
	tr := dial(t, addr, Options{Name: "cloud", Timeout: 2 * time.Second, Dial: dl.dial})
	root := tr.Root()

	c, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	d, err := timed(func() error { _, err := root.Lookup(c, "slow"); return err })
	cancel()
	wantKind(t, "lookup slow with a 100ms deadline", err, fs.Timeout)
	wantPrefix(t, "lookup slow", err, "cloud ("+addr+"): lookup slow: ")
	if d > delay {
		t.Errorf("lookup slow with a 100ms deadline took %v", d)
	}

	h, err := mustLookup(t, root, "slowfile").(fs.File).Open(ctx, fs.ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	buf := bytes.Repeat([]byte{0xAA}, 64)
	c, cancel = context.WithTimeout(ctx, 100*time.Millisecond)
	n, err := h.ReadAt(c, buf, 0)
	cancel()
	wantKind(t, "read with a 100ms deadline", err, fs.Timeout)
	if n != 0 {
		t.Errorf("read %d bytes", n)
	}
	time.Sleep(delay + 100*time.Millisecond) // the read ends meanwhile
	if !bytes.Equal(buf, bytes.Repeat([]byte{0xAA}, 64)) {
		t.Errorf("the caller's buffer was written after the call returned: %q", buf)
	}
	if n, err := h.ReadAt(ctx, buf, 0); string(buf[:n]) != "slow data" {
		t.Errorf("read again: %q, %v", buf[:n], err)
	}
	// Close waits for an abandoned read before it clunks the fid.
	c, cancel = context.WithTimeout(ctx, 50*time.Millisecond)
	h.ReadAt(c, buf, 0)
	cancel()
	if err := h.Close(ctx); err != nil {
		t.Errorf("close after an abandoned read: %v", err)
	}

	if st := tr.State(); !st.Connected || st.Reconnects != 0 || len(dl.dials()) != 1 {
		t.Errorf("state %+v after %d dials; want the first connection still open", st, len(dl.dials()))
	}
	if got := get(t, root, "f"); string(got) != "fast" {
		t.Errorf("read f: %q", got)
	}
}

// TestOneDial: calls arriving while a dial is under way wait for it
// instead of dialing too, whether it fails or succeeds.
func TestOneDial(t *testing.T) {
	for _, up := range []bool{false, true} {
		name := map[bool]string{false: "down", true: "up"}[up]
		t.Run(name, func(t *testing.T) {
			addr := refusedAddr(t)
			if up {
				addr = serve(t, memfs.New())
			}
			d := dialer{delay: 100 * time.Millisecond}
			tr := newTree(t, addr, Options{Name: "cloud", Timeout: time.Second, MinBackoff: time.Second, MaxBackoff: 2 * time.Second, Dial: d.dial})
			const n = 16
			errs := make([]error, n)
			var wg sync.WaitGroup
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, errs[i] = tr.Root().Stat(ctx)
				}()
			}
			wg.Wait()
			for i, err := range errs {
				if up && err != nil {
					t.Errorf("call %d: %v", i, err)
				}
				if !up {
					wantKind(t, "stat while down", err, fs.Unavailable)
					wantPrefix(t, "stat while down", err, "cloud ("+addr+"): stat: ")
				}
			}
			if got := len(d.dials()); got != 1 {
				t.Errorf("%d concurrent calls made %d dials, want 1", n, got)
			}
		})
	}
}

// TestKeepalive: an idle connection is probed; a probe that gets no
// answer ends the link before any call notices; Close stops the probes.
func TestKeepalive(t *testing.T) {
	const every = 50 * time.Millisecond
	root := memfs.New()
	p := newProxy(t, serve(t, root))
	var d dialer
	tr, err := Dial(ctx, "tcp", p.addr(), Options{Name: "cloud", Timeout: 150 * time.Millisecond, Keepalive: every, Dial: d.dial})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()

	before := d.writes.Load()
	time.Sleep(8 * every)
	if probes := d.writes.Load() - before; probes < 3 {
		t.Errorf("%d probes in %v of idleness", probes, 8*every)
	}
	if st := tr.State(); !st.Connected || st.Reconnects != 0 {
		t.Errorf("a healthy idle link: %+v", st)
	}

	p.freeze()
	var st LinkState
	for range 200 {
		if st = tr.State(); !st.Connected {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st.Connected || !strings.Contains(st.LastError, "keepalive") {
		t.Errorf("after the server went silent: %+v", st)
	}
	if got := len(d.dials()); got != 1 {
		t.Errorf("%d dials; the keepalive must not redial", got)
	}

	done := make(chan struct{})
	go func() { tr.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return")
	}
	_, err = tr.Root().Stat(ctx)
	wantKind(t, "stat after close", err, fs.BadHandle)
}

// TestInvalidOptions: options that make no sense fail every call, and
// Dial, with Invalid instead of being used.
func TestInvalidOptions(t *testing.T) {
	addr := serve(t, memfs.New())
	for _, o := range []Options{{Msize: 100}, {MinBackoff: time.Second, MaxBackoff: time.Millisecond}} {
		_, err := Dial(ctx, "tcp", addr, o)
		wantKind(t, "dial", err, fs.Invalid)
		tr := newTree(t, addr, o)
		_, err = tr.Root().Stat(ctx)
		wantKind(t, "stat", err, fs.Invalid)
		wantPrefix(t, "stat", err, addr+": stat: ")
	}
}

// whoTree is a tree whose file "who" holds name.
func whoTree(t *testing.T, name string) fs.Dir {
	t.Helper()
	root := memfs.New()
	_, h, err := root.Create(ctx, "who", fs.WriteOnly, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	h.WriteAt(ctx, []byte(name), 0)
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	return root
}

// who reads "who" through tr.
func who(tr *Tree) (string, error) {
	n, err := tr.Root().Lookup(ctx, "who")
	if err != nil {
		return "", err
	}
	h, err := n.(fs.File).Open(ctx, fs.ReadOnly)
	if err != nil {
		return "", err
	}
	defer h.Close(ctx)
	buf := make([]byte, 16)
	k, err := h.ReadAt(ctx, buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	return string(buf[:k]), nil
}

// TestSeveralAddresses: a Tree given two addresses of one tree uses one;
// when that server goes, the next call after the failure moves to the
// other, the errors and the state name the address in use, and with both
// gone the error names each.
func TestSeveralAddresses(t *testing.T) {
	a, b := newServer(t, whoTree(t, "a")), newServer(t, whoTree(t, "b"))
	tr := New("tcp", a.addr+","+b.addr, Options{Name: "edge", Timeout: 2 * time.Second, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	defer tr.Close()
	first, err := who(tr)
	if err != nil {
		t.Fatal(err)
	}
	servers := map[string]*server{"a": a, "b": b}
	other := map[string]string{"a": "b", "b": "a"}[first]
	if st := tr.State(); st.Addr != servers[first].addr || !st.Connected {
		t.Errorf("state %+v while connected to %s", st, first)
	}

	servers[first].stop()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got, err := who(tr)
		if err == nil && got == other {
			break
		}
		if err != nil && !strings.Contains(err.Error(), "edge ("+servers[first].addr+")") {
			t.Errorf("a failure that does not name the address that failed: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("still not on %s: %q, %v", other, got, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st := tr.State(); st.Addr != servers[other].addr {
		t.Errorf("state names %s, the tree is on %s", st.Addr, servers[other].addr)
	}

	servers[other].stop()
	deadline = time.Now().Add(20 * time.Second)
	for {
		_, err := who(tr)
		if err != nil && strings.Contains(err.Error(), a.addr+": ") && strings.Contains(err.Error(), b.addr+": ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("with both servers gone: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// One comes back: the tree finds it.
	servers[first].start()
	deadline = time.Now().Add(20 * time.Second)
	for {
		got, err := who(tr)
		if err == nil && got == first {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not back on %s: %q, %v", first, got, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if tr := New("tcp", a.addr+",", Options{}); tr.invalid == nil {
		t.Error("an empty address in the list was accepted")
	}
}
