package objstore

import (
	"bytes"
	"errors"
	"io"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/hugelgupf/p9/linux"
	"github.com/hugelgupf/p9/p9"

	"strata/fs"
	"strata/fs/fstest"
	"strata/fs/ninep"
	"strata/mount/remote"
)

// serve9P serves root over 9P on a loopback port until the test ends.
func serve9P(t *testing.T, root fs.Dir) string {
	t.Helper()
	srv := ninep.NewServer(root, testLog(t))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		c, cancel := contextWithTimeout(10 * time.Second)
		defer cancel()
		if err := srv.Shutdown(c); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; !errors.Is(err, ninep.ErrServerClosed) {
			t.Errorf("serve returned %v", err)
		}
	})
	return ln.Addr().String()
}

// TestConformance9P: the store served over 9P and seen through the
// remote client keeps the promises of the store itself.
func TestConformance9P(t *testing.T) {
	s := openStore(t, config(t, newBucket(t), "edge"))
	put(t, s.Root(), "top", []byte("top"))
	d, err := s.Root().Mkdir(ctx, "d", 0o755)
	if err != nil {
		t.Fatal(err)
	}
	put(t, d, "inner", bytes.Repeat([]byte("inner"), 3000))
	tr, err := remote.Dial(ctx, "tcp", serve9P(t, s.Root()), remote.Options{Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if err := fstest.Check(ctx, tr.Root(), "top", "d/inner"); err != nil {
		t.Fatal(err)
	}
}

// TestP9Client: a third-party 9P2000.L client (hugelgupf/p9) creates,
// writes, reads back, lists, renames and removes a file in the store.
func TestP9Client(t *testing.T) {
	bucket := newBucket(t)
	s := openStore(t, config(t, bucket, "p9"))
	c, err := net.Dial("tcp", serve9P(t, s.Root()))
	if err != nil {
		t.Fatal(err)
	}
	cl, err := p9.NewClient(c, p9.WithMessageSize(256<<10))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	root, err := cl.Attach("/")
	if err != nil {
		t.Fatal(err)
	}
	walk := func(names ...string) p9.File {
		t.Helper()
		_, f, err := root.Walk(names)
		if err != nil {
			t.Fatalf("walk %q: %v", names, err)
		}
		return f
	}
	if _, err := walk().Mkdir("dir", 0o755, p9.NoUID, p9.NoGID); err != nil {
		t.Fatal(err)
	}
	dir := walk("dir")
	f := walk("dir")
	if _, _, _, err := f.Create("a.txt", p9.ReadWrite, 0o640, p9.NoUID, p9.NoGID); err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("strata object store "), 20000) // 400 kB: several Twrites
	if n, err := f.WriteAt(data, 0); err != nil || n != len(data) {
		t.Fatalf("write: %d, %v", n, err)
	}
	if err := f.FSync(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	// Acknowledged: in the bucket, whole.
	if got := keys(t, bucket); !slices.Equal(got, []string{"p9/dir/", "p9/dir/a.txt"}) {
		t.Errorf("objects: %q", got)
	}

	g := walk("dir", "a.txt")
	_, valid, attr, err := g.GetAttr(p9.AttrMaskAll)
	if err != nil || !valid.Size || attr.Size != uint64(len(data)) || !attr.Mode.IsRegular() || attr.Mode.Permissions() != 0o640 {
		t.Errorf("getattr: %v %+v %v", valid, attr, err)
	}
	if _, _, err := g.Open(p9.ReadOnly); err != nil {
		t.Fatal(err)
	}
	var got []byte
	buf := make([]byte, 100_000)
	for {
		n, err := g.ReadAt(buf, int64(len(got)))
		got = append(got, buf[:n]...)
		if errors.Is(err, io.EOF) || (err == nil && n == 0) {
			break
		}
		if err != nil {
			t.Fatalf("read: %v", err)
		}
	}
	if !bytes.Equal(got, data) {
		t.Errorf("read back %d bytes, want %d", len(got), len(data))
	}
	g.Close()

	list := func(d p9.File) []string {
		t.Helper()
		_, l, err := d.Walk(nil)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		if _, _, err := l.Open(p9.ReadOnly); err != nil {
			t.Fatal(err)
		}
		var names []string
		for off := uint64(0); ; {
			ents, err := l.Readdir(off, 4096)
			if err != nil {
				t.Fatalf("readdir: %v", err)
			}
			if len(ents) == 0 {
				return names
			}
			for _, e := range ents {
				if e.Name != "." && e.Name != ".." {
					names = append(names, e.Name)
				}
				off = e.Offset
			}
		}
	}
	if got := list(dir); !slices.Equal(got, []string{"a.txt"}) {
		t.Errorf("listing: %q", got)
	}
	if err := dir.RenameAt("a.txt", root, "b.txt"); err != nil {
		t.Fatal(err)
	}
	if got := list(root); !slices.Equal(got, []string{"b.txt", "dir"}) {
		t.Errorf("listing after rename: %q", got)
	}
	if _, _, err := dir.Walk([]string{"a.txt"}); !errors.Is(err, linux.ENOENT) {
		t.Errorf("walk to the renamed file: %v, want ENOENT", err)
	}
	b := walk("b.txt")
	if _, _, attr, err := b.GetAttr(p9.AttrMaskAll); err != nil || attr.Size != uint64(len(data)) || attr.Mode.Permissions() != 0o640 {
		t.Errorf("getattr after rename: %+v %v", attr, err)
	}
	b.Close()
	if err := root.UnlinkAt("dir", 0); !errors.Is(err, linux.EISDIR) {
		t.Errorf("unlink a directory: %v, want EISDIR", err)
	}
	dir.Close()
	if err := root.UnlinkAt("dir", 0x200); err != nil {
		t.Fatal(err)
	}
	if err := root.UnlinkAt("b.txt", 0); err != nil {
		t.Fatal(err)
	}
	if err := root.UnlinkAt("b.txt", 0); !errors.Is(err, linux.ENOENT) {
		t.Errorf("remove a missing file: %v, want ENOENT", err)
	}
	if got := list(root); len(got) != 0 {
		t.Errorf("listing after removes: %q", got)
	}
	if got := keys(t, bucket); len(got) != 0 {
		t.Errorf("objects left: %q", got)
	}
}
