package ninep

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"9fans.net/go/plan9"
	"9fans.net/go/plan9/client"

	"strata/fs"
	"strata/fs/memfs"
)

// plan9Serve serves root over TCP on 127.0.0.1 until the test ends and
// returns the address. opt may adjust the server before it starts.
func plan9Serve(t testing.TB, root fs.Dir, opt ...func(*Server)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(root, plan9TestLog(t))
	for _, o := range opt {
		o(srv)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		if err := srv.Shutdown(sctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		cancel()
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
	})
	return ln.Addr().String()
}

// plan9TestLog logs warnings and worse into the test's output; set
// STRATA_TEST_DEBUG=1 to see everything.
func plan9TestLog(t testing.TB) *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("STRATA_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: level}))
}

// plan9Mount attaches a 9fans client to addr.
func plan9Mount(t testing.TB, addr, user string) (*client.Conn, *client.Fsys) {
	t.Helper()
	c, err := client.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	fsys, err := c.Attach(nil, user, "")
	if err != nil {
		c.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, fsys
}

// plan9Raw is a bare 9P2000 connection for tests that need to control
// every frame: pipelining, flushes, hostile bytes.
type plan9Raw struct {
	t     testing.TB
	c     net.Conn
	r     *bufio.Reader
	msize uint32
	wmu   sync.Mutex
}

func plan9Dial(t testing.TB, addr string) *plan9Raw {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &plan9Raw{t: t, c: c, r: bufio.NewReader(c)}
}

// plan9DialVersion dials and negotiates 9P2000 with msize.
func plan9DialVersion(t testing.TB, addr string, msize uint32) *plan9Raw {
	t.Helper()
	rc := plan9Dial(t, addr)
	rx := rc.rpc(&plan9.Fcall{Type: plan9.Tversion, Tag: plan9.NOTAG, Msize: msize, Version: "9P2000"})
	if rx.Type != plan9.Rversion || rx.Version != "9P2000" {
		t.Fatalf("Tversion: got %v", rx)
	}
	rc.msize = rx.Msize
	return rc
}

// plan9DialAttach dials, negotiates and attaches fid 0 to the root.
func plan9DialAttach(t testing.TB, addr string) *plan9Raw {
	t.Helper()
	rc := plan9DialVersion(t, addr, 8192)
	rc.ok(&plan9.Fcall{Type: plan9.Tattach, Tag: 1, Fid: 0, Afid: plan9.NOFID, Uname: "tester"})
	return rc
}

func (rc *plan9Raw) send(f *plan9.Fcall) {
	rc.t.Helper()
	b, err := f.Bytes()
	if err != nil {
		rc.t.Fatal(err)
	}
	rc.sendRaw(b)
}

// trySend is send for goroutines other than the test's.
func (rc *plan9Raw) trySend(f *plan9.Fcall) error {
	b, err := f.Bytes()
	if err != nil {
		return err
	}
	rc.wmu.Lock()
	defer rc.wmu.Unlock()
	rc.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err = rc.c.Write(b)
	return err
}

func (rc *plan9Raw) sendRaw(b []byte) {
	rc.t.Helper()
	rc.wmu.Lock()
	defer rc.wmu.Unlock()
	rc.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := rc.c.Write(b); err != nil {
		rc.t.Fatalf("send: %v", err)
	}
}

// recv reads one reply, failing the test after a timeout.
func (rc *plan9Raw) recv() *plan9.Fcall {
	rc.t.Helper()
	f, err := rc.tryRecv(10 * time.Second)
	if err != nil {
		rc.t.Fatalf("recv: %v", err)
	}
	return f
}

func (rc *plan9Raw) tryRecv(timeout time.Duration) (*plan9.Fcall, error) {
	rc.c.SetReadDeadline(time.Now().Add(timeout))
	return plan9.ReadFcall(rc.r)
}

func (rc *plan9Raw) rpc(f *plan9.Fcall) *plan9.Fcall {
	rc.t.Helper()
	rc.send(f)
	rx := rc.recv()
	if rx.Tag != f.Tag {
		rc.t.Fatalf("%v: reply %v has another tag", f, rx)
	}
	return rx
}

// ok sends f and fails the test unless the reply is its R-message.
func (rc *plan9Raw) ok(f *plan9.Fcall) *plan9.Fcall {
	rc.t.Helper()
	rx := rc.rpc(f)
	if rx.Type != f.Type+1 {
		rc.t.Fatalf("%v: got %v", f, rx)
	}
	return rx
}

// fail sends f and returns the Rerror's text, failing the test on success.
func (rc *plan9Raw) fail(f *plan9.Fcall) string {
	rc.t.Helper()
	rx := rc.rpc(f)
	if rx.Type != plan9.Rerror {
		rc.t.Fatalf("%v: got %v, want Rerror", f, rx)
	}
	return rx.Ename
}

// closed reports whether the server has closed the connection (reading
// gives EOF or a reset within the timeout).
func (rc *plan9Raw) closed(timeout time.Duration) bool {
	rc.c.SetReadDeadline(time.Now().Add(timeout))
	_, err := io.ReadAll(rc.r)
	var ne net.Error
	return err == nil || !(errors.As(err, &ne) && ne.Timeout())
}

// plan9TestTree is a memfs tree with a few files.
func plan9TestTree(t testing.TB, files map[string]string) fs.Dir {
	t.Helper()
	ctx := context.Background()
	root := memfs.New()
	for p, data := range files {
		names := plan9Split(p)
		d := root
		for _, e := range names[:len(names)-1] {
			c, err := d.Lookup(ctx, e)
			if err != nil {
				if c, err = d.Mkdir(ctx, e, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			d = c.(fs.Dir)
		}
		name := names[len(names)-1]
		_, h, err := d.Create(ctx, name, fs.ReadWrite|fs.Truncate, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.WriteAt(ctx, []byte(data), 0); err != nil {
			t.Fatal(err)
		}
		if err := h.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func plan9Split(p string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(p); i++ {
		if i == len(p) || p[i] == '/' {
			if i > start {
				out = append(out, p[start:i])
			}
			start = i + 1
		}
	}
	return out
}

// plan9ReadFile reads a whole file through the tree itself.
func plan9ReadFile(t testing.TB, root fs.Dir, p string) (string, error) {
	t.Helper()
	ctx := context.Background()
	n, err := fs.Walk(ctx, root, p)
	if err != nil {
		return "", err
	}
	f, ok := n.(fs.File)
	if !ok {
		return "", fmt.Errorf("%s is not a file", p)
	}
	h, err := f.Open(ctx, fs.ReadOnly)
	if err != nil {
		return "", err
	}
	defer h.Close(ctx)
	var out []byte
	buf := make([]byte, 32<<10)
	for {
		n, err := h.ReadAt(ctx, buf, int64(len(out)))
		out = append(out, buf[:n]...)
		if err == io.EOF || n == 0 {
			return string(out), nil
		}
		if err != nil {
			return string(out), err
		}
	}
}

// plan9Gate is a file whose reads block until the request is canceled or
// the gate opens; it counts the reads blocked in it.
type plan9Gate struct {
	fs.FileDefaults
	open    chan struct{}
	mu      sync.Mutex
	blocked int
	most    int
	entered chan struct{}
}

func newPlan9Gate() *plan9Gate {
	return &plan9Gate{open: make(chan struct{}), entered: make(chan struct{}, 4096)}
}

func (g *plan9Gate) Stat(context.Context) (fs.Info, error) {
	return fs.Info{Name: "gate", Mode: 0o444, ID: 9999, Stream: true}, nil
}

func (g *plan9Gate) Open(context.Context, fs.Flag) (fs.Handle, error) {
	return &plan9GateHandle{g: g}, nil
}

type plan9GateHandle struct {
	fs.HandleDefaults
	g *plan9Gate
}

func (h *plan9GateHandle) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	g := h.g
	g.mu.Lock()
	g.blocked++
	g.most = max(g.most, g.blocked)
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		g.blocked--
		g.mu.Unlock()
	}()
	g.entered <- struct{}{}
	select {
	case <-g.open:
		return copy(p, "gate"), nil
	case <-ctx.Done():
		return 0, &fs.Error{Op: "read", Path: "gate", Kind: fs.Canceled, Err: ctx.Err()}
	}
}

// plan9Extra is a directory that shows the nodes in extra beside those of
// the directory it wraps.
type plan9Extra struct {
	fs.Dir
	extra map[string]fs.Node
}

func (d *plan9Extra) Lookup(ctx context.Context, name string) (fs.Node, error) {
	if n, ok := d.extra[name]; ok {
		return n, nil
	}
	return d.Dir.Lookup(ctx, name)
}
