package ninep

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hugelgupf/p9/linux"
	"github.com/hugelgupf/p9/p9"

	"strata/fs"
	"strata/fs/memfs"
	"strata/fs/ninep/ninetest"
)

// logBuf collects a server's log; it is shown when a test fails.
type logBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// startL serves root on a loopback port and returns its address.
func startL(t testing.TB, root fs.Dir, tune ...func(*Server)) (string, *logBuf) {
	t.Helper()
	logs := &logBuf{}
	s := NewServer(root, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	for _, f := range tune {
		f(s)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("serve returned %v", err)
		}
		if t.Failed() {
			t.Logf("server log:\n%s", logs)
		}
	})
	return ln.Addr().String(), logs
}

// dialL connects the stock p9 client, which asks for "9P2000.L.Google.7".
func dialL(t testing.TB, addr string, msize uint32) (*p9.Client, p9.File) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := p9.NewClient(c, p9.WithMessageSize(msize))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	if v := cl.Version(); v != 7 {
		t.Errorf("negotiated 9P2000.L.Google.%d, want 7", v)
	}
	root, err := cl.Attach("/")
	if err != nil {
		t.Fatal(err)
	}
	return cl, root
}

func exchangeVersion(t testing.TB, c net.Conn, msize uint32) uint32 {
	t.Helper()
	if _, err := c.Write(ltversionFrame(0xffff, msize, "9P2000.L")); err != nil {
		t.Fatal(err)
	}
	typ, _, body := readFrame(t, c)
	if typ != msgRversion || len(body) < 6 {
		t.Fatalf("got message type %d to Tversion", typ)
	}
	if v := string(body[6:]); v != "9P2000.L" {
		t.Fatalf("version %q", v)
	}
	return binary.LittleEndian.Uint32(body)
}

func readFrame(t testing.TB, c net.Conn) (typ uint8, tag uint16, body []byte) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	var hdr [7]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		t.Fatalf("reading a reply: %v", err)
	}
	body = make([]byte, binary.LittleEndian.Uint32(hdr[:])-7)
	if _, err := io.ReadFull(c, body); err != nil {
		t.Fatalf("reading a reply: %v", err)
	}
	return hdr[4], binary.LittleEndian.Uint16(hdr[5:]), body
}

// frame builds a T message from its parts: uint8, uint16, uint32 and
// string (a 9P string) values.
func frame(typ uint8, tag uint16, parts ...any) []byte {
	b := []byte{0, 0, 0, 0, typ, 0, 0}
	binary.LittleEndian.PutUint16(b[5:], tag)
	for _, p := range parts {
		switch v := p.(type) {
		case uint16:
			b = binary.LittleEndian.AppendUint16(b, v)
		case uint32:
			b = binary.LittleEndian.AppendUint32(b, v)
		case uint64:
			b = binary.LittleEndian.AppendUint64(b, v)
		case string:
			b = binary.LittleEndian.AppendUint16(b, uint16(len(v)))
			b = append(b, v...)
		default:
			panic(fmt.Sprintf("frame: %T", p))
		}
	}
	binary.LittleEndian.PutUint32(b, uint32(len(b)))
	return b
}

func wantErrno(t testing.TB, what string, err error, want linux.Errno) {
	t.Helper()
	var got linux.Errno
	if !errors.As(err, &got) || got != want {
		t.Errorf("%s: got error %v, want %v (errno %d)", what, err, want, uintptr(want))
	}
}

func walkTo(t testing.TB, root p9.File, names ...string) p9.File {
	t.Helper()
	_, f, err := root.Walk(names)
	if err != nil {
		t.Fatalf("walk %q: %v", names, err)
	}
	return f
}

func readAll(t testing.TB, f p9.File) []byte {
	t.Helper()
	var out []byte
	buf := make([]byte, 1<<16)
	for off := int64(0); ; {
		n, err := f.ReadAt(buf, off)
		out = append(out, buf[:n]...)
		off += int64(n)
		if errors.Is(err, io.EOF) || err == nil && n == 0 {
			return out
		}
		if err != nil {
			t.Fatalf("read: %v", err)
		}
	}
}

func list(t testing.TB, dir p9.File) []string {
	t.Helper()
	d := walkTo(t, dir)
	defer d.Close()
	if _, _, err := d.Open(p9.ReadOnly); err != nil {
		t.Fatalf("open dir: %v", err)
	}
	var names []string
	for off := uint64(0); ; {
		ents, err := d.Readdir(off, 4096)
		if err != nil {
			t.Fatalf("readdir: %v", err)
		}
		if len(ents) == 0 {
			return names
		}
		for _, e := range ents {
			names = append(names, e.Name)
			off = e.Offset
		}
	}
}

// TestLinuxFiles: a third-party client (p9's) creates, writes, reads back,
// lists, renames and removes, and errors arrive as the right errno.
func TestLinuxFiles(t *testing.T) {
	addr, logs := startL(t, memfs.New())
	if err := ninetest.LinuxClient(addr, ninetest.LinuxOptions{Msize: 64 << 10}); err != nil {
		t.Error(err)
	}
	// Failures are logged at debug level with the op, the path and the
	// tree's own text: the client's remove of the missing b.txt.
	if l := logs.String(); !strings.Contains(l, "op=remove path=/b.txt") || !strings.Contains(l, "file does not exist") {
		t.Errorf("log lacks the failed remove:\n%s", l)
	}
}

// TestLinuxTauth: Tauth gets Rlerror ENOENT (no authentication needed),
// and the connection goes on: an attach with no afid works.
func TestLinuxTauth(t *testing.T) {
	addr, _ := startL(t, memfs.New())
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	exchangeVersion(t, c, 8192)
	const nofid = ^uint32(0)
	c.Write(frame(102, 7, uint32(1), "glenda", "/", nofid))
	typ, tag, body := readFrame(t, c)
	if typ != msgRlerror || tag != 7 || binary.LittleEndian.Uint32(body) != uint32(syscall.ENOENT) {
		t.Fatalf("Tauth answered with type %d tag %d body %x, want Rlerror ENOENT", typ, tag, body)
	}
	c.Write(frame(104, 8, uint32(1), nofid, "glenda", "/", uint32(0)))
	if typ, tag, _ := readFrame(t, c); typ != 105 || tag != 8 {
		t.Fatalf("Tattach answered with type %d tag %d, want Rattach", typ, tag)
	}
}

// TestLinuxConcurrentClients: several clients at once, each with several
// goroutines, on one tree (run with -race).
func TestLinuxConcurrentClients(t *testing.T) {
	addr, _ := startL(t, memfs.New())
	var wg sync.WaitGroup
	for c := range 6 {
		_, root := dialL(t, addr, 32<<10)
		for g := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 10 {
					name := fmt.Sprintf("c%d-g%d-%d", c, g, i)
					want := bytes.Repeat([]byte(name), 1000+i*100)
					f := walkTo(t, root)
					if _, _, _, err := f.Create(name, p9.ReadWrite, 0o600, p9.NoUID, p9.NoGID); err != nil {
						t.Error(err)
						return
					}
					if _, err := f.WriteAt(want, 0); err != nil {
						t.Error(err)
					}
					f.Close()
					r := walkTo(t, root, name)
					r.Open(p9.ReadOnly)
					if got := readAll(t, r); !bytes.Equal(got, want) {
						t.Errorf("%s: read back %d bytes, want %d", name, len(got), len(want))
					}
					r.Close()
					if i%2 == 0 {
						if err := root.UnlinkAt(name, 0); err != nil {
							t.Error(err)
						}
					}
				}
			}()
		}
	}
	wg.Wait()
	_, root := dialL(t, addr, 32<<10)
	if n := len(list(t, root)); n != 6*4*5 {
		t.Errorf("%d files left, want %d", n, 6*4*5)
	}
}

// TestLinuxLargeMessages: with a 4 MiB msize, Twrite and Rread frames of
// almost 4 MiB go through the frame reader and writer intact.
func TestLinuxLargeMessages(t *testing.T) {
	addr, _ := startL(t, memfs.New())
	_, root := dialL(t, addr, MaxMsizeL)
	data := make([]byte, 9<<20)
	for i := range data {
		data[i] = byte(i*7 + i>>13)
	}
	f := walkTo(t, root)
	if _, _, _, err := f.Create("big", p9.ReadWrite, 0o644, p9.NoUID, p9.NoGID); err != nil {
		t.Fatal(err)
	}
	if n, err := f.WriteAt(data, 0); err != nil || n != len(data) {
		t.Fatalf("write: %d, %v", n, err)
	}
	got := make([]byte, len(data))
	if n, err := f.ReadAt(got, 0); n != len(data) || err != nil && !errors.Is(err, io.EOF) {
		t.Fatalf("read: %d, %v", n, err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("data read back differs")
	}
	f.Close()
}

// TestLinuxHostileWalks: names that would leave the root or are not one
// path element are refused, and the connection and server keep serving.
func TestLinuxHostileWalks(t *testing.T) {
	tree := memfs.New()
	ctx := context.Background()
	d, _ := tree.Mkdir(ctx, "d", 0o755)
	_, h, _ := d.Create(ctx, "f", fs.WriteOnly, 0o644)
	h.Close(ctx)
	addr, _ := startL(t, tree)
	_, root := dialL(t, addr, 8192)
	sub := walkTo(t, root, "d")
	for _, names := range [][]string{
		{".."}, {"d", ".."}, {"d", "..", ".."}, {"/"}, {"/etc"}, {""}, {"."}, {"a\x00b"},
		{"d/f"}, {"d", "f", "x"}, {strings.Repeat("n", 256)},
	} {
		for _, from := range []p9.File{root, sub} {
			_, f, err := from.Walk(names)
			if err == nil {
				f.Close()
				t.Errorf("walk %q succeeded", names)
			}
		}
	}
	_, _, _, err := walkTo(t, root).Create("..", p9.WriteOnly, 0o644, p9.NoUID, p9.NoGID)
	wantErrno(t, `create ".."`, err, linux.EINVAL)
	_, _, _, err = walkTo(t, root).Create("x\x00y", p9.WriteOnly, 0o644, p9.NoUID, p9.NoGID)
	wantErrno(t, "create with NUL", err, linux.EINVAL)
	wantErrno(t, "rename to ..", root.RenameAt("d", sub, ".."), linux.EINVAL)
	_, err = root.Mkdir(strings.Repeat("n", 256), 0o755, p9.NoUID, p9.NoGID)
	wantErrno(t, "mkdir with a long name", err, linux.ENAMETOOLONG)

	// Still serving, on this connection and on a new one.
	walkTo(t, root, "d", "f").Close()
	_, root2 := dialL(t, addr, 8192)
	walkTo(t, root2, "d", "f").Close()
	if got := list(t, root); !slices.Equal(got, []string{"d"}) {
		t.Errorf("listing: %q", got)
	}
}

// TestLinuxOversizedFrame: a frame larger than msize closes that
// connection; the server goes on serving others.
func TestLinuxOversizedFrame(t *testing.T) {
	addr, logs := startL(t, memfs.New())
	_, root := dialL(t, addr, 8192) // a bystander

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	exchangeVersion(t, c, 8192)
	hdr := frame(118, 1, uint32(1), uint64(0), uint32(1<<20)) // Twrite claiming 1 MiB
	binary.LittleEndian.PutUint32(hdr, 1<<20+uint32(len(hdr)))
	c.Write(hdr)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 64)); !errors.Is(err, io.EOF) {
		t.Fatalf("after an oversized frame: read %d bytes, %v; want EOF", n, err)
	}
	if !strings.Contains(logs.String(), "frame size out of bounds") {
		t.Errorf("no log of the refused frame")
	}
	walkTo(t, root).Close()
	_, root2 := dialL(t, addr, 8192)
	walkTo(t, root2).Close()
}

// failingTree is a one-directory tree whose files refuse to acknowledge
// their data on Close, and whose handles record how many run at once.
type failingTree struct {
	fs.DirDefaults
	closeErr error
	block    chan struct{} // if not nil, reads wait on it
	running  atomic.Int32
	most     atomic.Int32
}

func (d *failingTree) Stat(context.Context) (fs.Info, error) {
	return fs.Info{Mode: iofs.ModeDir | 0o755, ID: 1}, nil
}
func (d *failingTree) Lookup(_ context.Context, name string) (fs.Node, error) {
	if name != "f" {
		return nil, &fs.Error{Op: "lookup", Path: name, Kind: fs.NotExist}
	}
	return failingFile{d}, nil
}
func (d *failingTree) ReadDir(context.Context) ([]fs.Info, error) {
	return []fs.Info{{Name: "f", Mode: 0o644, ID: 2}}, nil
}

type failingFile struct{ d *failingTree }

func (f failingFile) Stat(context.Context) (fs.Info, error) {
	return fs.Info{Name: "f", Mode: 0o644, ID: 2, Stream: true}, nil
}
func (failingFile) SetAttr(context.Context, fs.Attr) error { return nil }
func (f failingFile) Open(context.Context, fs.Flag) (fs.Handle, error) {
	return failingHandle(f), nil
}

type failingHandle struct{ d *failingTree }

func (h failingHandle) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	n := h.d.running.Add(1)
	defer h.d.running.Add(-1)
	for m := h.d.most.Load(); n > m && !h.d.most.CompareAndSwap(m, n); m = h.d.most.Load() {
	}
	if h.d.block != nil {
		select {
		case <-h.d.block:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	return 0, io.EOF
}
func (h failingHandle) WriteAt(_ context.Context, p []byte, _ int64) (int, error) {
	return len(p), nil
}
func (failingHandle) Sync(context.Context) error { return nil }
func (h failingHandle) Close(context.Context) error {
	return h.d.closeErr
}

// TestLinuxCloseError: the Handle's Close error is the Rclunk's error, so
// a writer learns its data was not acknowledged. A Stream file's size is
// not claimed valid.
func TestLinuxCloseError(t *testing.T) {
	tree := &failingTree{closeErr: &fs.Error{Op: "close", Path: "f", Kind: fs.NoSpace, Err: errors.New("disk full")}}
	addr, logs := startL(t, tree)
	_, root := dialL(t, addr, 8192)
	f := walkTo(t, root, "f")
	if _, valid, _, err := f.GetAttr(p9.AttrMaskAll); err != nil || valid.Size {
		t.Errorf("stream file: size valid %v, err %v", valid.Size, err)
	}
	if _, _, err := f.Open(p9.WriteOnly); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("data"), 0); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, "clunk", f.Close(), linux.ENOSPC)
	if !strings.Contains(logs.String(), "disk full") {
		t.Errorf("the close error is not logged")
	}
	// A clunk without an open handle has nothing to fail.
	if err := walkTo(t, root, "f").Close(); err != nil {
		t.Errorf("clunk of an unopened fid: %v", err)
	}
}

// TestLinuxMaxOutstanding: past MaxOutstanding requests in flight the
// server reads no more from the connection.
func TestLinuxMaxOutstanding(t *testing.T) {
	tree := &failingTree{block: make(chan struct{})}
	addr, _ := startL(t, tree, func(s *Server) { s.MaxOutstanding = 3 })
	_, root := dialL(t, addr, 8192)
	var files []p9.File
	for range 10 {
		f := walkTo(t, root, "f")
		if _, _, err := f.Open(p9.ReadOnly); err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	var wg sync.WaitGroup
	for _, f := range files {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.ReadAt(make([]byte, 10), 0)
			f.Close()
		}()
	}
	deadline := time.Now().Add(5 * time.Second)
	for tree.running.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	if n := tree.most.Load(); n != 3 {
		t.Errorf("%d reads ran at once, want 3", n)
	}
	close(tree.block)
	wg.Wait()
}

// TestLinuxReaddirOffsets: a listing read in small pieces is complete and
// has no duplicates while the directory changes between the pieces.
func TestLinuxReaddirOffsets(t *testing.T) {
	tree := memfs.New()
	ctx := context.Background()
	var want []string
	for i := range 200 {
		name := fmt.Sprintf("file-with-a-longish-name-%03d", i)
		want = append(want, name)
		_, h, _ := tree.Create(ctx, name, fs.WriteOnly, 0o644)
		h.Close(ctx)
	}
	addr, _ := startL(t, tree)
	_, root := dialL(t, addr, 8192)
	d := walkTo(t, root)
	d.Open(p9.ReadOnly)
	var got []string
	for off, round := uint64(0), 0; ; round++ {
		ents, err := d.Readdir(off, 512)
		if err != nil {
			t.Fatal(err)
		}
		if len(ents) == 0 {
			break
		}
		for _, e := range ents {
			got = append(got, e.Name)
			off = e.Offset
		}
		// Change the directory under the reader.
		tree.Remove(ctx, want[len(want)-1-round])
		_, h, _ := tree.Create(ctx, fmt.Sprintf("a-new-%d", round), fs.WriteOnly, 0o644)
		h.Close(ctx)
	}
	if !slices.Equal(got, want) {
		t.Errorf("listing of %d names differs from the %d at offset 0", len(got), len(want))
	}
}

// TestLinuxVersions: p9 is asked for the client's 9P2000.L variant when it
// knows it, and for plain 9P2000.L otherwise.
func TestLinuxVersions(t *testing.T) {
	addr, _ := startL(t, memfs.New())
	for asked, want := range map[string]string{
		"9P2000.L":          "9P2000.L",
		"9P2000.L.Google.3": "9P2000.L.Google.3",
		"9P2000.L.Google.x": "9P2000.L",
		"9P2000.L.other":    "9P2000.L",
	} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(ltversionFrame(0xffff, 8192, asked))
		typ, _, body := readFrame(t, c)
		c.Close()
		if got := string(body[6:]); typ != msgRversion || got != want || binary.LittleEndian.Uint32(body) != 8192 {
			t.Errorf("Tversion %q: type %d, msize %d, version %q; want Rversion 8192 %q", asked, typ, binary.LittleEndian.Uint32(body), got, want)
		}
	}
}
