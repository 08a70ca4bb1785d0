package remote

import (
	"bytes"
	"context"
	"errors"
	"io"
	iofs "io/fs"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"strata/fs"
	"strata/fs/fstest"
	"strata/fs/memfs"
	"strata/fs/ninep"
	"strata/fs/store"
)

var ctx = context.Background()

// serve serves root over 9P on a loopback port.
func serve(t testing.TB, root fs.Dir) string {
	t.Helper()
	s := ninep.NewServer(root, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ctx, ln)
	t.Cleanup(func() {
		c, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		s.Shutdown(c)
	})
	return ln.Addr().String()
}

func dial(t testing.TB, addr string, opts Options) *Tree {
	t.Helper()
	tr, err := Dial(ctx, "tcp", addr, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

func openStore(t testing.TB) fs.Dir {
	t.Helper()
	s, err := store.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s.Root()
}

// TestConformance: tree -> 9P2000.L server -> this client keeps the
// promises of the tree itself, for the in-memory tree and the store.
func TestConformance(t *testing.T) {
	for name, root := range map[string]fs.Dir{"memfs": memfs.New(), "store": openStore(t)} {
		t.Run(name, func(t *testing.T) {
			put(t, root, "top", []byte("top"))
			d, err := root.Mkdir(ctx, "d", 0o755)
			if err != nil {
				t.Fatal(err)
			}
			put(t, d, "inner", bytes.Repeat([]byte("inner"), 3000))
			tr := dial(t, serve(t, root), Options{})
			if err := fstest.Check(ctx, tr.Root(), "top", "d/inner"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func put(t testing.TB, d fs.Dir, name string, data []byte) {
	t.Helper()
	_, h, err := d.Create(ctx, name, fs.WriteOnly|fs.Truncate, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.WriteAt(ctx, data, 0); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

func get(t testing.TB, d fs.Dir, name string) []byte {
	t.Helper()
	n, err := d.Lookup(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	h, err := n.(fs.File).Open(ctx, fs.ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close(ctx)
	var out []byte
	buf := make([]byte, 1<<20)
	for {
		n, err := h.ReadAt(ctx, buf, int64(len(out)))
		out = append(out, buf[:n]...)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

func wantKind(t testing.TB, what string, err error, k fs.Kind) {
	t.Helper()
	var fe *fs.Error
	if !errors.As(err, &fe) || fe.Kind != k {
		t.Errorf("%s: got %v, want an fs.Error of kind %q", what, err, k)
	}
}

// TestErrors: the server's errnos come back as the tree's kinds.
func TestErrors(t *testing.T) {
	tr := dial(t, serve(t, memfs.New()), Options{})
	root := tr.Root()
	put(t, root, "f", []byte("x"))
	d, err := root.Mkdir(ctx, "d", 0o755)
	if err != nil {
		t.Fatal(err)
	}
	put(t, d, "g", nil)

	_, err = root.Lookup(ctx, "missing")
	wantKind(t, "lookup missing", err, fs.NotExist)
	_, _, err = root.Create(ctx, "f", fs.WriteOnly|fs.Excl, 0o644)
	wantKind(t, "exclusive create", err, fs.Exist)
	_, err = root.Mkdir(ctx, "d", 0o755)
	wantKind(t, "mkdir existing", err, fs.Exist)
	wantKind(t, "remove non-empty", root.Remove(ctx, "d"), fs.NotEmpty)
	wantKind(t, "rename to another tree", root.Rename(ctx, "f", memfs.New(), "f"), fs.CrossDevice)
	_, err = root.Lookup(ctx, "..")
	wantKind(t, "lookup ..", err, fs.Invalid)
	if err := d.Remove(ctx, "g"); err != nil {
		t.Fatal(err)
	}
	if err := root.Remove(ctx, "d"); err != nil { // a directory: the second try
		t.Fatal(err)
	}
	if err := root.Rename(ctx, "f", root, "f2"); err != nil {
		t.Fatal(err)
	}
	info, err := mustLookup(t, root, "f2").Stat(ctx)
	if err != nil || info.Size != 1 || info.Name != "f2" || info.ID == 0 {
		t.Errorf("stat f2: %+v, %v", info, err)
	}
	size := int64(0)
	if err := mustLookup(t, root, "f2").SetAttr(ctx, fs.Attr{Size: &size}); err != nil {
		t.Fatal(err)
	}
	if got := get(t, root, "f2"); len(got) != 0 {
		t.Errorf("after truncate: %q", got)
	}
}

func mustLookup(t testing.TB, d fs.Dir, name string) fs.Node {
	t.Helper()
	n, err := d.Lookup(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestMsize: the client asks for more than the server allows and uses the
// server's answer; large writes and reads then go through.
func TestMsize(t *testing.T) {
	tr := dial(t, serve(t, memfs.New()), Options{Msize: 16 << 20})
	s, err := tr.connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.payload > ninep.MaxMsizeL || s.payload < ninep.MaxMsizeL-4096 {
		t.Errorf("payload %d for a server msize of %d", s.payload, ninep.MaxMsizeL)
	}
	data := bytes.Repeat([]byte("0123456789"), 1_300_000) // 13 MB
	put(t, tr.Root(), "big", data)
	if got := get(t, tr.Root(), "big"); !bytes.Equal(got, data) {
		t.Errorf("read back %d bytes, want %d", len(got), len(data))
	}
}

// closeFails is a tree of one file whose handles refuse to acknowledge.
type closeFails struct{ fs.DirDefaults }

func (closeFails) Stat(context.Context) (fs.Info, error) {
	return fs.Info{Mode: iofs.ModeDir | 0o755, ID: 1}, nil
}
func (closeFails) Lookup(_ context.Context, name string) (fs.Node, error) {
	if name != "f" {
		return nil, &fs.Error{Op: "lookup", Path: name, Kind: fs.NotExist}
	}
	return closeFailsFile{}, nil
}
func (closeFails) ReadDir(context.Context) ([]fs.Info, error) {
	return []fs.Info{{Name: "f", Mode: 0o644, ID: 2}}, nil
}

type closeFailsFile struct{ fs.FileDefaults }

func (closeFailsFile) Stat(context.Context) (fs.Info, error) {
	return fs.Info{Name: "f", Mode: 0o644, ID: 2, Stream: true}, nil
}
func (closeFailsFile) Open(context.Context, fs.Flag) (fs.Handle, error) {
	return closeFailsHandle{}, nil
}

type closeFailsHandle struct{ fs.HandleDefaults }

func (closeFailsHandle) WriteAt(_ context.Context, p []byte, _ int64) (int, error) {
	return len(p), nil
}
func (closeFailsHandle) Close(context.Context) error {
	return &fs.Error{Op: "close", Path: "f", Kind: fs.NoSpace}
}

// TestCloseError: the server's refusal to acknowledge at close reaches the
// caller of Close, and a Stream file is seen as one.
func TestCloseError(t *testing.T) {
	tr := dial(t, serve(t, closeFails{}), Options{})
	f := mustLookup(t, tr.Root(), "f")
	if info, err := f.Stat(ctx); err != nil || !info.Stream {
		t.Errorf("stat: %+v, %v; want a Stream file", info, err)
	}
	h, err := f.(fs.File).Open(ctx, fs.WriteOnly)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.WriteAt(ctx, []byte("req"), 0); err != nil {
		t.Fatal(err)
	}
	wantKind(t, "close", h.Close(ctx), fs.NoSpace)
	wantKind(t, "second close", h.Close(ctx), fs.BadHandle)
}

// proxy forwards TCP connections to a server until frozen; then it
// accepts and holds connections but forwards nothing, like a server that
// stopped answering.
type proxy struct {
	ln      net.Listener
	backend string
	mu      sync.Mutex
	frozen  bool
	conns   []net.Conn
}

func newProxy(t testing.TB, backend string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, backend: backend}
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.drop()
	})
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		p.conns = append(p.conns, c)
		frozen := p.frozen
		p.mu.Unlock()
		if frozen || p.backend == "" {
			go io.Copy(io.Discard, c)
			continue
		}
		b, err := net.Dial("tcp", p.backend)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, b)
		p.mu.Unlock()
		go p.pipe(b, c)
		go p.pipe(c, b)
	}
}

func (p *proxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		for p.isFrozen() {
			time.Sleep(5 * time.Millisecond)
		}
		if n > 0 {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

func (p *proxy) isFrozen() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.frozen
}

func (p *proxy) freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.frozen = true
}

func (p *proxy) drop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// TestSilentServer: against a server that accepts and never answers,
// dialing and then every operation end with a Timeout that names the
// server, within the deadline (bounds are generous: this tests behaviour,
// not timing).
func TestSilentServer(t *testing.T) {
	const timeout = 200 * time.Millisecond
	const bound = 3 * time.Second
	check := func(what string, start time.Time, err error, addr string) {
		t.Helper()
		d := time.Since(start)
		t.Logf("%s: %v after %v", what, err, d.Round(time.Millisecond))
		if d > bound {
			t.Errorf("%s took %v", what, d)
		}
		wantKind(t, what, err, fs.Timeout)
		if err != nil && !strings.Contains(err.Error(), addr) {
			t.Errorf("%s: %q does not name %s", what, err, addr)
		}
	}

	silent := newProxy(t, "")
	start := time.Now()
	_, err := Dial(ctx, "tcp", silent.addr(), Options{Timeout: timeout})
	check("dial", start, err, silent.addr())

	// A server that answered at first, then stopped.
	root := memfs.New()
	put(t, root, "f", []byte("data"))
	root.Mkdir(ctx, "d", 0o755)
	p := newProxy(t, serve(t, root))
	tr := dial(t, p.addr(), Options{Timeout: timeout, Log: slog.New(slog.DiscardHandler)})
	r := tr.Root()
	f := mustLookup(t, r, "f").(fs.File)
	d := mustLookup(t, r, "d").(fs.Dir)
	rh, err := f.Open(ctx, fs.ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	wh, _, err := func() (fs.Handle, fs.File, error) {
		nf, h, err := r.Create(ctx, "w", fs.WriteOnly, 0o644)
		return h, nf, err
	}()
	if err != nil {
		t.Fatal(err)
	}
	p.freeze()
	size := int64(1)
	buf := make([]byte, 10)
	for _, c := range []struct {
		what string
		call func() error
	}{
		{"read", func() error { _, err := rh.ReadAt(ctx, buf, 0); return err }},
		{"stat", func() error { _, err := r.Stat(ctx); return err }},
		{"stat file", func() error { _, err := f.Stat(ctx); return err }},
		{"lookup", func() error { _, err := r.Lookup(ctx, "f"); return err }},
		{"readdir", func() error { _, err := d.ReadDir(ctx); return err }},
		{"create", func() error { _, _, err := r.Create(ctx, "g", fs.WriteOnly, 0o644); return err }},
		{"mkdir", func() error { _, err := r.Mkdir(ctx, "e", 0o755); return err }},
		{"remove", func() error { return r.Remove(ctx, "f") }},
		{"rename", func() error { return r.Rename(ctx, "f", d, "f") }},
		{"setattr", func() error { return f.SetAttr(ctx, fs.Attr{Size: &size}) }},
		{"open", func() error { _, err := f.Open(ctx, fs.ReadOnly); return err }},
		{"write", func() error { _, err := wh.WriteAt(ctx, buf, 0); return err }},
		{"sync", func() error { return wh.Sync(ctx) }},
		{"close", func() error { return wh.Close(ctx) }},
	} {
		start := time.Now()
		check(c.what, start, c.call(), p.addr())
	}
}

// TestReconnect: when the connection breaks, the next operation dials
// again; a handle of the old connection fails and reports why.
func TestReconnect(t *testing.T) {
	root := memfs.New()
	put(t, root, "f", []byte("data"))
	p := newProxy(t, serve(t, root))
	tr := dial(t, p.addr(), Options{Timeout: time.Second})
	h, err := mustLookup(t, tr.Root(), "f").(fs.File).Open(ctx, fs.ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	p.drop()
	_, err = h.ReadAt(ctx, make([]byte, 4), 0)
	wantKind(t, "read on a broken connection", err, fs.Unavailable)
	if got := get(t, tr.Root(), "f"); string(got) != "data" {
		t.Errorf("after reconnecting: %q", got)
	}
	_, err = h.ReadAt(ctx, make([]byte, 4), 0)
	wantKind(t, "read on the old connection", err, fs.Unavailable)
}

// TestCanceled: a canceled context ends a call at once with Canceled and
// leaves the connection usable.
func TestCanceled(t *testing.T) {
	root := memfs.New()
	p := newProxy(t, serve(t, root))
	tr := dial(t, p.addr(), Options{Timeout: 10 * time.Second})
	c, cancel := context.WithCancel(ctx)
	cancel()
	_, err := tr.Root().Stat(c)
	wantKind(t, "stat with a canceled context", err, fs.Canceled)
	if _, err := tr.Root().Stat(ctx); err != nil {
		t.Errorf("stat afterwards: %v", err)
	}
}
