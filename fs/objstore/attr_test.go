package objstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	iofs "io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"strata/fs"
)

// TestSetAttr: permission bits and modification times are kept, a size
// truncates or extends, and handles open for writing keep what was set.
func TestSetAttr(t *testing.T) {
	cfg := config(t, newBucket(t), "attr")
	a, b := openStore(t, cfg), openStore(t, cfg)
	root := a.Root()
	f := put(t, root, "f", []byte("0123456789"))

	mode := iofs.FileMode(0o600)
	when := time.Date(2001, 2, 3, 4, 5, 6, 789, time.UTC)
	if err := f.SetAttr(ctx, fs.Attr{Mode: &mode, ModTime: &when}); err != nil {
		t.Fatal(err)
	}
	wantInfo(t, b.Root(), "f", 10, 0o600, when)
	mode = 0o640
	if err := f.SetAttr(ctx, fs.Attr{Mode: &mode}); err != nil {
		t.Fatal(err)
	}
	wantInfo(t, b.Root(), "f", 10, 0o640, when) // chmod keeps the time

	size := int64(4)
	if err := f.SetAttr(ctx, fs.Attr{Size: &size}); err != nil {
		t.Fatal(err)
	}
	expect(t, b.Root(), "f", "0123")
	size = 6
	if err := f.SetAttr(ctx, fs.Attr{Size: &size}); err != nil {
		t.Fatal(err)
	}
	expect(t, b.Root(), "f", "0123\x00\x00")
	if info, err := f.Stat(ctx); err != nil || info.Mode.Perm() != 0o640 {
		t.Errorf("mode after truncation: %v %v", info.Mode, err)
	}

	// A copy with its attributes set while open (cp -p): kept at close.
	_, h, err := root.Create(ctx, "copy", fs.WriteOnly|fs.Truncate, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	write(t, h, []byte("copied"), 0)
	cn, _ := root.Lookup(ctx, "copy")
	mode = 0o751
	if err := cn.SetAttr(ctx, fs.Attr{Mode: &mode, ModTime: &when}); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	wantInfo(t, b.Root(), "copy", 6, 0o751, when)
	expect(t, b.Root(), "copy", "copied")

	// open (no O_TRUNC), ftruncate(0), write, close.
	h, err = cn.(fs.File).Open(ctx, fs.ReadWrite)
	if err != nil {
		t.Fatal(err)
	}
	size = 0
	if err := cn.SetAttr(ctx, fs.Attr{Size: &size}); err != nil {
		t.Fatal(err)
	}
	if got, err := fs.ReadHandle(ctx, h, 1<<30); err != nil || len(got) != 0 {
		t.Errorf("read through the handle after truncation: %q, %v", got, err)
	}
	write(t, h, []byte("abc"), 0)
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	expect(t, b.Root(), "copy", "abc")
	if info, _ := cn.Stat(ctx); info.ModTime.Equal(when) {
		t.Errorf("a write after the time was set kept the old time")
	}

	// Directories keep theirs on the marker; the root keeps none.
	d, err := root.Mkdir(ctx, "d", 0o700)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := d.Stat(ctx); err != nil || info.Mode != iofs.ModeDir|0o700 {
		t.Errorf("stat d: %v %v", info.Mode, err)
	}
	mode = 0o711
	if err := d.SetAttr(ctx, fs.Attr{Mode: &mode, ModTime: &when}); err != nil {
		t.Fatal(err)
	}
	if info, err := d.Stat(ctx); err != nil || info.Mode != iofs.ModeDir|0o711 || !info.ModTime.Equal(when) {
		t.Errorf("stat d after setattr: %+v %v", info, err)
	}
	wantKind(t, "truncate a directory", d.SetAttr(ctx, fs.Attr{Size: &size}), fs.IsDir)
	wantKind(t, "chmod the root", root.SetAttr(ctx, fs.Attr{Mode: &mode}), fs.Unsupported)
	neg := int64(-1)
	wantKind(t, "truncate to -1", f.SetAttr(ctx, fs.Attr{Size: &neg}), fs.Invalid)
}

func wantInfo(t testing.TB, root fs.Dir, p string, size int64, mode iofs.FileMode, mtime time.Time) {
	t.Helper()
	n, err := fs.Walk(ctx, root, p)
	if err != nil {
		t.Error(err)
		return
	}
	info, err := n.Stat(ctx)
	if err != nil || info.Size != size || info.Mode != mode || !info.ModTime.Equal(mtime) {
		t.Errorf("stat %s: size %d, mode %v, mtime %v, %v; want %d, %v, %v", p, info.Size, info.Mode, info.ModTime, err, size, mode, mtime)
	}
}

// TestRenameDirectory: a directory moves with everything under it,
// keeping modes; nodes looked up before follow; the bad cases fail.
func TestRenameDirectory(t *testing.T) {
	cfg := config(t, newBucket(t), "rd")
	a, b := openStore(t, cfg), openStore(t, cfg)
	root := a.Root()
	src, _ := root.Mkdir(ctx, "src", 0o700)
	put(t, src, "a", []byte("a"))
	sub, _ := src.Mkdir(ctx, "sub", 0o755)
	put(t, sub, "b", []byte("b"))
	deep, _ := sub.Mkdir(ctx, "deep", 0o755)
	c := put(t, deep, "c", []byte("c"))
	mode := iofs.FileMode(0o604)
	c.SetAttr(ctx, fs.Attr{Mode: &mode})
	other, _ := root.Mkdir(ctx, "other", 0o755)
	put(t, root, "plain", []byte("plain"))

	// An open writer in the directory follows the move.
	h, err := c.Open(ctx, fs.WriteOnly|fs.Append)
	if err != nil {
		t.Fatal(err)
	}
	if err := root.Rename(ctx, "src", other, "dst"); err != nil {
		t.Fatal(err)
	}
	write(t, h, []byte("+"), 0)
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	expect(t, b.Root(), "other/dst/a", "a")
	expect(t, b.Root(), "other/dst/sub/b", "b")
	expect(t, b.Root(), "other/dst/sub/deep/c", "c+")
	if info, err := c.Stat(ctx); err != nil || info.Mode.Perm() != 0o604 || info.Name != "c" {
		t.Errorf("stat through the node after the move: %+v %v", info, err)
	}
	if info, err := src.Stat(ctx); err != nil || info.Mode != iofs.ModeDir|0o700 || info.Name != "dst" {
		t.Errorf("stat the moved directory through its node: %+v %v", info, err)
	}
	if _, err := b.Root().Lookup(ctx, "src"); !isKind(err, fs.NotExist) {
		t.Errorf("lookup src after the move: %v", err)
	}
	if got := keys(t, cfg.Bucket); !slices.Equal(got, []string{"rd/other/", "rd/other/dst/", "rd/other/dst/a", "rd/other/dst/sub/", "rd/other/dst/sub/b", "rd/other/dst/sub/deep/", "rd/other/dst/sub/deep/c", "rd/plain"}) {
		t.Errorf("objects: %q", got)
	}

	dst, _ := fs.Walk(ctx, root, "other/dst")
	wantKind(t, "move a directory into itself", other.Rename(ctx, "dst", dst.(fs.Dir), "x"), fs.Invalid)
	root.Mkdir(ctx, "taken", 0o755)
	wantKind(t, "move a directory over a directory", other.Rename(ctx, "dst", root, "taken"), fs.Exist)
	wantKind(t, "move a directory over a file", other.Rename(ctx, "dst", root, "plain"), fs.NotDir)
	wantKind(t, "move a file over a directory", root.Rename(ctx, "plain", root, "taken"), fs.IsDir)
	wantKind(t, "move a missing name", root.Rename(ctx, "nothing", root, "x"), fs.NotExist)
	if err := other.Rename(ctx, "dst", other, "dst"); err != nil {
		t.Errorf("rename a directory to itself: %v", err)
	}
}

// TestExclusiveCreate: O_EXCL fails on a name that exists, on this edge
// or another; without it, Create opens the existing file.
func TestExclusiveCreate(t *testing.T) {
	cfg := config(t, newBucket(t), "excl")
	a, b := openStore(t, cfg), openStore(t, cfg)
	_, h, err := a.Root().Create(ctx, "x", fs.WriteOnly|fs.Excl, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = b.Root().Create(ctx, "x", fs.WriteOnly|fs.Excl, 0o644)
	wantKind(t, "exclusive create on the other edge", err, fs.Exist)
	write(t, h, []byte("mine"), 0)
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	_, h, err = b.Root().Create(ctx, "x", fs.ReadWrite, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := fs.ReadHandle(ctx, h, 1<<30); err != nil || string(got) != "mine" {
		t.Errorf("create without O_EXCL read %q, %v", got, err)
	}
	h.Close(ctx)
	b.Root().Mkdir(ctx, "d", 0o755)
	_, _, err = a.Root().Create(ctx, "d", fs.WriteOnly|fs.Excl, 0o644)
	wantKind(t, "exclusive create over a directory", err, fs.Exist)
	_, _, err = a.Root().Create(ctx, "d", fs.WriteOnly, 0o644)
	wantKind(t, "create over a directory", err, fs.IsDir)
	_, err = a.Root().Mkdir(ctx, "x", 0o755)
	wantKind(t, "mkdir over a file", err, fs.Exist)

	// Many edges race for one name: exactly one wins.
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		wins int
	)
	for i := range 6 {
		s := a
		if i%2 == 1 {
			s = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, h, err := s.Root().Create(ctx, "race", fs.WriteOnly|fs.Excl, 0o644)
			if err == nil {
				mu.Lock()
				wins++
				mu.Unlock()
				h.Close(ctx)
			} else if !isKind(err, fs.Exist) {
				t.Errorf("racing create: %v", err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Errorf("%d racing exclusive creates won, want 1", wins)
	}
}

// TestStaging: a store works in a staging directory of its own, flocked;
// one left by a store that ended without closing is removed by the next
// Open, one in use is not.
func TestStaging(t *testing.T) {
	cfg := config(t, newBucket(t), "st")
	stale := filepath.Join(cfg.StagingDir, "store-stale")
	os.MkdirAll(stale, 0o700)
	writeFile(t, filepath.Join(stale, "w-1"), "left by a crash")
	a := openStore(t, cfg)
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale staging directory: %v", err)
	}
	b := openStore(t, cfg)
	if _, err := os.Stat(a.stage); err != nil {
		t.Errorf("the staging directory of an open store was removed: %v", err)
	}
	_, h, err := b.Root().Create(ctx, "f", fs.WriteOnly, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	write(t, h, []byte("staged"), 0)
	if left := staged(t, b); len(left) != 1 {
		t.Errorf("staged files while writing: %v", left)
	}
	h.Close(ctx)
	if left := staged(t, b); len(left) != 0 {
		t.Errorf("staged files after close: %v", left)
	}
	// The store's staging directory is locked.
	f, err := os.Open(b.stage)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err == nil {
		t.Errorf("the staging directory of an open store is not locked")
	}
}

// TestClosedStore: every use of a closed store fails with BadHandle.
func TestClosedStore(t *testing.T) {
	s := openStore(t, config(t, newBucket(t), "closed"))
	root := s.Root()
	f := put(t, root, "f", []byte("f"))
	s.Close()
	_, err := root.Lookup(ctx, "f")
	wantKind(t, "lookup", err, fs.BadHandle)
	_, err = f.Open(ctx, fs.ReadOnly)
	wantKind(t, "open", err, fs.BadHandle)
	_, err = root.ReadDir(ctx)
	wantKind(t, "readdir", err, fs.BadHandle)
	wantKind(t, "close again", s.Close(), fs.BadHandle)
}

// TestCanceled: a canceled context fails calls with Canceled; Close of a
// handle still uploads.
func TestCanceled(t *testing.T) {
	s := openStore(t, config(t, newBucket(t), "cancel"))
	c, cancel := context.WithCancel(ctx)
	_, h, err := s.Root().Create(c, "f", fs.WriteOnly, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	write(t, h, []byte("kept"), 0)
	cancel()
	_, err = s.Root().Lookup(c, "f")
	wantKind(t, "lookup with a canceled context", err, fs.Canceled)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error %v is not context.Canceled", err)
	}
	if err := h.Close(c); err != nil {
		t.Fatalf("close with a canceled context: %v", err)
	}
	expect(t, s.Root(), "f", "kept")
}

// TestConcurrentHandles: readers and writers of the same and different
// files at once, on two edges.
func TestConcurrentHandles(t *testing.T) {
	cfg := config(t, newBucket(t), "conc")
	cfg.BlockSize = 8192
	a, b := openStore(t, cfg), openStore(t, cfg)
	data := bytes.Repeat([]byte("0123456789abcdef"), 10_000)
	put(t, a.Root(), "shared", data)
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := a
			if i%2 == 1 {
				s = b
			}
			name := fmt.Sprintf("own%d", i)
			put(t, s.Root(), name, bytes.Repeat([]byte{byte('a' + i)}, 50_000+i))
			for range 3 {
				got, err := get(t, s.Root(), "shared")
				if err != nil || !bytes.Equal(got, data) {
					t.Errorf("read shared: %d bytes, %v", len(got), err)
				}
			}
			expect(t, s.Root(), name, string(bytes.Repeat([]byte{byte('a' + i)}, 50_000+i)))
		}()
	}
	// One handle read from many goroutines at once.
	n, _ := a.Root().Lookup(ctx, "shared")
	h, err := n.(fs.File).Open(ctx, fs.ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 10_000)
			off := int64(i * 30_000)
			if n, err := h.ReadAt(ctx, buf, off); err != nil || !bytes.Equal(buf[:n], data[off:off+int64(n)]) {
				t.Errorf("concurrent read at %d: %d, %v", off, n, err)
			}
		}()
	}
	wg.Wait()
	h.Close(ctx)
}
