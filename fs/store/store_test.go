package store

import (
	"bytes"
	"context"
	"errors"
	"io"
	iofs "io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"strata/fs"
)

var ctx = context.Background()

// open opens a store in a new temporary directory and closes it when the
// test ends.
func open(t testing.TB) (*Store, string) {
	t.Helper()
	dir := t.TempDir()
	s, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, dir
}

func put(t testing.TB, d fs.Dir, name string, data []byte) fs.File {
	t.Helper()
	f, h, err := d.Create(ctx, name, fs.ReadWrite|fs.Truncate, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	write(t, h, data, 0)
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	return f
}

func write(t testing.TB, h fs.Handle, data []byte, off int64) {
	t.Helper()
	if n, err := h.WriteAt(ctx, data, off); n != len(data) || err != nil {
		t.Fatalf("write %d bytes at %d: wrote %d, %v", len(data), off, n, err)
	}
}

// readAll reads h from 0 to its end.
func readAll(t testing.TB, h fs.Handle) []byte {
	t.Helper()
	var out []byte
	buf := make([]byte, 4096)
	for {
		n, err := h.ReadAt(ctx, buf, int64(len(out)))
		out = append(out, buf[:n]...)
		if err == io.EOF || (err == nil && n == 0) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

func lookupFile(t testing.TB, d fs.Dir, name string) fs.File {
	t.Helper()
	n, err := d.Lookup(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	f, ok := n.(fs.File)
	if !ok {
		t.Fatalf("lookup %s: %T, want a File", name, n)
	}
	return f
}

func lookupDir(t testing.TB, d fs.Dir, name string) fs.Dir {
	t.Helper()
	n, err := d.Lookup(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	sub, ok := n.(fs.Dir)
	if !ok {
		t.Fatalf("lookup %s: %T, want a Dir", name, n)
	}
	return sub
}

// get reads the file name through a fresh lookup and open.
func get(t testing.TB, d fs.Dir, name string) []byte {
	t.Helper()
	h, err := lookupFile(t, d, name).Open(ctx, fs.ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close(ctx)
	return readAll(t, h)
}

func expect(t testing.TB, d fs.Dir, name, want string) {
	t.Helper()
	if got := get(t, d, name); string(got) != want {
		t.Errorf("%s holds %q, want %q", name, got, want)
	}
}

// wantErr checks that err is an *fs.Error of kind k whose path is p.
func wantErr(t testing.TB, err error, k fs.Kind, p string) {
	t.Helper()
	var fe *fs.Error
	switch {
	case err == nil:
		t.Errorf("no error, want %q", k)
	case !errors.As(err, &fe):
		t.Errorf("error %v (%T) is not an *fs.Error", err, err)
	case fe.Kind != k || fe.Path != p || fe.Op == "":
		t.Errorf("error %q: kind %q, op %q, path %q; want kind %q, path %q", err, fe.Kind, fe.Op, fe.Path, k, p)
	}
}

// temps lists the temporary files under dir on disk.
func temps(t testing.TB, dir string) []string {
	t.Helper()
	var found []string
	filepath.WalkDir(dir, func(p string, d iofs.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), TempPrefix) {
			found = append(found, p)
		}
		return nil
	})
	return found
}

func inode(t testing.TB, path string) uint64 {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

func TestOpen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	s, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		t.Fatalf("Open did not make the directory: %v", err)
	}
	_, err = Open(dir, nil)
	wantErr(t, err, fs.Busy, dir)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	wantErr(t, s.Close(), fs.BadHandle, "")
	s, err = Open(dir, nil)
	if err != nil {
		t.Fatalf("open after close: %v", err)
	}
	s.Close()

	f := filepath.Join(t.TempDir(), "file")
	os.WriteFile(f, nil, 0o644)
	_, err = Open(f, nil)
	wantErr(t, err, fs.NotDir, f)
}

func TestCreateAndStat(t *testing.T) {
	s, dir := open(t)
	root := s.Root()
	f := put(t, root, "f", []byte("hello"))
	expect(t, root, "f", "hello")

	info, err := f.Stat(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Name != "f" || info.Size != 5 || info.Mode != 0o644 || info.IsDir() {
		t.Errorf("stat f: %+v", info)
	}
	if want := inode(t, filepath.Join(dir, "f")); info.ID != want {
		t.Errorf("stat f: ID %d, want the inode %d", info.ID, want)
	}
	ri, err := root.Stat(ctx)
	if err != nil || !ri.IsDir() || ri.Mode&iofs.ModeDir == 0 || ri.Name != "" || ri.ID != inode(t, dir) {
		t.Errorf("stat root: %+v, %v", ri, err)
	}

	put(t, root, "f", []byte("HELLO"))
	again, _ := f.Stat(ctx)
	if again.Version == info.Version {
		t.Errorf("version %d did not change with the content", info.Version)
	}

	_, _, err = root.Create(ctx, "f", fs.ReadWrite|fs.Excl, 0o644)
	wantErr(t, err, fs.Exist, "f")
	if !errors.Is(err, iofs.ErrExist) {
		t.Errorf("%v is not fs.ErrExist", err)
	}

	// Without Excl an existing file is opened, in place unless truncated.
	_, h, err := root.Create(ctx, "f", fs.ReadWrite, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	write(t, h, []byte("J"), 0)
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	expect(t, root, "f", "JELLO")

	// Create read-only makes an empty file and reads it.
	_, h, err = root.Create(ctx, "ro", fs.ReadOnly, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, h); len(got) != 0 {
		t.Errorf("new file reads %q", got)
	}
	_, err = h.WriteAt(ctx, []byte("x"), 0)
	wantErr(t, err, fs.BadHandle, "ro")
	h.Close(ctx)

	sub, err := root.Mkdir(ctx, "d", 0o755)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = root.Create(ctx, "d", fs.ReadWrite, 0o644)
	wantErr(t, err, fs.IsDir, "d")
	_, _, err = sub.Create(ctx, "x", fs.WriteOnly, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	_, err = fs.Walk(ctx, root, "f/x")
	wantErr(t, err, fs.NotDir, "f")
}

func TestNewFileIsEmptyUntilClose(t *testing.T) {
	s, dir := open(t)
	root := s.Root()
	_, h, err := root.Create(ctx, "new", fs.ReadWrite, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	write(t, h, []byte("content"), 0)
	if fi, err := os.Stat(filepath.Join(dir, "new")); err != nil || fi.Size() != 0 || fi.Mode().Perm() != 0o640 {
		t.Fatalf("on disk before close: %v, %v", fi, err)
	}
	expect(t, root, "new", "")
	if got := readAll(t, h); string(got) != "content" {
		t.Errorf("the writing handle reads %q", got)
	}
	if len(temps(t, dir)) != 1 {
		t.Errorf("temporary files: %v", temps(t, dir))
	}
	if list, _ := root.ReadDir(ctx); len(list) != 1 || list[0].Name != "new" {
		t.Errorf("readdir shows %v", list)
	}
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	expect(t, root, "new", "content")
	if fi, _ := os.Stat(filepath.Join(dir, "new")); fi.Mode().Perm() != 0o640 {
		t.Errorf("mode after the rewrite: %v", fi.Mode())
	}
	if tt := temps(t, dir); len(tt) != 0 {
		t.Errorf("temporary files left: %v", tt)
	}
}

func TestRewrite(t *testing.T) {
	s, dir := open(t)
	root := s.Root()
	f := put(t, root, "f", []byte("old content"))
	os.Chmod(filepath.Join(dir, "f"), 0o604)
	before := inode(t, filepath.Join(dir, "f"))

	reader, err := f.Open(ctx, fs.ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close(ctx)
	h, err := f.Open(ctx, fs.ReadWrite|fs.Truncate)
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, h); len(got) != 0 {
		t.Errorf("a truncating handle reads %q", got)
	}
	write(t, h, []byte("new"), 0)
	expect(t, root, "f", "old content")
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	expect(t, root, "f", "new")
	if got := readAll(t, reader); string(got) != "old content" {
		t.Errorf("a handle opened before the rewrite reads %q", got)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "f")); fi.Mode().Perm() != 0o604 {
		t.Errorf("mode after the rewrite: %v", fi.Mode())
	}
	if inode(t, filepath.Join(dir, "f")) == before {
		t.Errorf("a rewrite kept the inode")
	}

	// A truncating open that writes nothing empties the file.
	h, err = f.Open(ctx, fs.WriteOnly|fs.Truncate)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	expect(t, root, "f", "")

	_, err = f.Open(ctx, fs.ReadOnly|fs.Truncate)
	wantErr(t, err, fs.Invalid, "f")
	if tt := temps(t, dir); len(tt) != 0 {
		t.Errorf("temporary files left: %v", tt)
	}
}

// TestAbort: an aborted rewrite leaves the old content and no temporary
// file; a handle describes the file it has open, not the one at its name.
func TestAbort(t *testing.T) {
	s, dir := open(t)
	root := s.Root()
	f := put(t, root, "f", []byte("old content"))

	reader, err := f.Open(ctx, fs.ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close(ctx)

	h, err := f.Open(ctx, fs.WriteOnly|fs.Truncate)
	if err != nil {
		t.Fatal(err)
	}
	write(t, h, []byte("half an upload"), 0)
	if err := h.(fs.Aborter).Abort(ctx); err != nil {
		t.Fatal(err)
	}
	expect(t, root, "f", "old content")
	if tt := temps(t, dir); len(tt) != 0 {
		t.Errorf("temporary files left after an abort: %v", tt)
	}
	wantErr(t, h.(fs.Aborter).Abort(ctx), fs.BadHandle, "f")
	wantErr(t, h.Close(ctx), fs.BadHandle, "f")

	// A new file aborted stays, empty, as Create made it.
	_, h, err = root.Create(ctx, "g", fs.WriteOnly, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	write(t, h, []byte("lost"), 0)
	if err := h.(fs.Aborter).Abort(ctx); err != nil {
		t.Fatal(err)
	}
	expect(t, root, "g", "")

	// The reader opened before a rewrite keeps describing the old file.
	put(t, root, "f", []byte("new"))
	info, err := reader.(fs.HandleStater).Stat(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Name != "f" || info.Size != int64(len("old content")) {
		t.Errorf("the old handle's Stat says %+v, want f with the old size", info)
	}
	cur, err := lookupFile(t, root, "f").Stat(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cur.Size != 3 || cur.ID == info.ID {
		t.Errorf("the node says %+v, the old handle %+v", cur, info)
	}
}

func TestSyncPublishes(t *testing.T) {
	s, dir := open(t)
	root := s.Root()
	f := put(t, root, "f", []byte("old"))
	h, err := f.Open(ctx, fs.ReadWrite|fs.Truncate)
	if err != nil {
		t.Fatal(err)
	}
	write(t, h, []byte("first"), 0)
	if err := h.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	expect(t, root, "f", "first")
	if tt := temps(t, dir); len(tt) != 0 {
		t.Errorf("temporary files after sync: %v", tt)
	}
	// From now on the handle writes in place.
	write(t, h, []byte("+second"), 5)
	expect(t, root, "f", "first+second")
	if err := h.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	expect(t, root, "f", "first+second")
}

func TestWriteInPlace(t *testing.T) {
	s, dir := open(t)
	root := s.Root()
	f := put(t, root, "f", []byte("0123456789"))
	before := inode(t, filepath.Join(dir, "f"))
	h, err := f.Open(ctx, fs.WriteOnly)
	if err != nil {
		t.Fatal(err)
	}
	write(t, h, []byte("ab"), 3)
	expect(t, root, "f", "012ab56789") // no rewrite: seen at once
	write(t, h, []byte("XYZ"), 12)
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	expect(t, root, "f", "012ab56789\x00\x00XYZ")
	if inode(t, filepath.Join(dir, "f")) != before {
		t.Errorf("a write in place changed the inode")
	}
}

func TestOffsets(t *testing.T) {
	s, _ := open(t)
	root := s.Root()
	_, h, err := root.Create(ctx, "sparse", fs.ReadWrite, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	write(t, h, []byte("tail"), 1<<20)
	write(t, h, []byte("head"), 0)
	write(t, h, []byte("mid"), 4096)
	buf := make([]byte, 4)
	if n, err := h.ReadAt(ctx, buf, 1<<20); n != 4 || string(buf) != "tail" || (err != nil && err != io.EOF) {
		t.Errorf("read back: %d %q %v", n, buf, err)
	}
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 1<<20+4)
	copy(want, "head")
	copy(want[4096:], "mid")
	copy(want[1<<20:], "tail")
	if got := get(t, root, "sparse"); !bytes.Equal(got, want) {
		t.Errorf("sparse file differs (%d bytes, want %d)", len(got), len(want))
	}

	h, _ = lookupFile(t, root, "sparse").Open(ctx, fs.ReadOnly)
	defer h.Close(ctx)
	n, err := h.ReadAt(ctx, buf, 1<<20+2)
	if n != 2 || err != io.EOF || string(buf[:2]) != "il" {
		t.Errorf("short read at the end: %d %q %v; want 2 \"il\" io.EOF", n, buf[:n], err)
	}
	if n, err := h.ReadAt(ctx, buf, 1<<30); n != 0 || err != io.EOF {
		t.Errorf("read past the end: %d, %v", n, err)
	}
	_, err = h.ReadAt(ctx, buf, -1)
	wantErr(t, err, fs.Invalid, "sparse")
}

func TestAppend(t *testing.T) {
	s, _ := open(t)
	root := s.Root()
	f := put(t, root, "log", []byte("one\n"))
	h, err := f.Open(ctx, fs.ReadWrite|fs.Append)
	if err != nil {
		t.Fatal(err)
	}
	write(t, h, []byte("two\n"), 0)
	write(t, h, []byte("three\n"), 2)
	if got := readAll(t, h); string(got) != "one\ntwo\nthree\n" {
		t.Errorf("the appending handle reads %q", got)
	}
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	expect(t, root, "log", "one\ntwo\nthree\n")

	// Append to a rewrite, and to a new file.
	h, err = f.Open(ctx, fs.WriteOnly|fs.Append|fs.Truncate)
	if err != nil {
		t.Fatal(err)
	}
	write(t, h, []byte("a"), 100)
	write(t, h, []byte("b"), 0)
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	expect(t, root, "log", "ab")
	_, h, err = root.Create(ctx, "new", fs.WriteOnly|fs.Append, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	write(t, h, []byte("x"), 7)
	write(t, h, []byte("y"), 7)
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	expect(t, root, "new", "xy")
}

func TestSetAttr(t *testing.T) {
	s, dir := open(t)
	root := s.Root()
	f := put(t, root, "f", []byte("0123456789"))
	size := func(n int64) fs.Attr { return fs.Attr{Size: &n} }
	if err := f.SetAttr(ctx, size(4)); err != nil {
		t.Fatal(err)
	}
	expect(t, root, "f", "0123")
	if err := f.SetAttr(ctx, size(6)); err != nil {
		t.Fatal(err)
	}
	expect(t, root, "f", "0123\x00\x00")
	wantErr(t, f.SetAttr(ctx, size(-1)), fs.Invalid, "f")

	mode := iofs.FileMode(0o600)
	mtime := time.Date(2001, 2, 3, 4, 5, 6, 7000, time.UTC)
	if err := f.SetAttr(ctx, fs.Attr{Mode: &mode, ModTime: &mtime}); err != nil {
		t.Fatal(err)
	}
	info, _ := f.Stat(ctx)
	if info.Mode != 0o600 || !info.ModTime.Equal(mtime) || info.Size != 6 {
		t.Errorf("after setattr: %+v", info)
	}
	// Size, then mode and time: a truncation does not undo the new mtime.
	zero := int64(0)
	if err := f.SetAttr(ctx, fs.Attr{Size: &zero, ModTime: &mtime}); err != nil {
		t.Fatal(err)
	}
	if info, _ := f.Stat(ctx); info.Size != 0 || !info.ModTime.Equal(mtime) {
		t.Errorf("after truncate and touch: %+v", info)
	}

	sub, _ := root.Mkdir(ctx, "d", 0o755)
	wantErr(t, sub.SetAttr(ctx, size(0)), fs.IsDir, "d")
	dmode := iofs.FileMode(0o700)
	if err := sub.SetAttr(ctx, fs.Attr{Mode: &dmode, ModTime: &mtime}); err != nil {
		t.Fatal(err)
	}
	if info, _ := sub.Stat(ctx); info.Mode != iofs.ModeDir|0o700 || !info.ModTime.Equal(mtime) {
		t.Errorf("dir after setattr: %+v", info)
	}
	if err := root.SetAttr(ctx, fs.Attr{Mode: &dmode}); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Errorf("root mode %v", fi.Mode())
	}
}

func TestReadDir(t *testing.T) {
	s, dir := open(t)
	root := s.Root()
	for _, n := range []string{"c", "a", "b"} {
		put(t, root, n, []byte(n+n))
	}
	root.Mkdir(ctx, "dir", 0o750)
	os.WriteFile(filepath.Join(dir, TempPrefix+"leftover"), nil, 0o600)
	os.Symlink("a", filepath.Join(dir, "link"))
	syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o600)

	list, err := root.ReadDir(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range list {
		names = append(names, e.Name)
		n, err := root.Lookup(ctx, e.Name)
		if err != nil {
			t.Errorf("lookup %s: %v", e.Name, err)
			continue
		}
		ni, _ := n.Stat(ctx)
		if ni.ID != e.ID || ni.Mode != e.Mode || ni.Version != e.Version {
			t.Errorf("%s: listed %+v, stats %+v", e.Name, e, ni)
		}
	}
	if got := strings.Join(names, ","); got != "a,b,c,dir" {
		t.Errorf("readdir: %s, want a,b,c,dir", got)
	}
	if list[3].Mode != iofs.ModeDir|0o750 || list[0].Size != 2 {
		t.Errorf("entries: %+v", list)
	}
	_, err = root.Lookup(ctx, "fifo")
	wantErr(t, err, fs.Permission, "fifo")
}

func TestRemove(t *testing.T) {
	s, _ := open(t)
	root := s.Root()
	f := put(t, root, "f", []byte("x"))
	sub, _ := root.Mkdir(ctx, "d", 0o755)
	put(t, sub, "g", nil)

	wantErr(t, root.Remove(ctx, "d"), fs.NotEmpty, "d")
	if err := root.Remove(ctx, "f"); err != nil {
		t.Fatal(err)
	}
	_, err := root.Lookup(ctx, "f")
	wantErr(t, err, fs.NotExist, "f")
	if !errors.Is(err, iofs.ErrNotExist) || !errors.Is(err, syscall.ENOENT) {
		t.Errorf("%v is not fs.ErrNotExist and ENOENT", err)
	}
	_, err = f.Stat(ctx)
	wantErr(t, err, fs.NotExist, "f")
	_, err = f.Open(ctx, fs.ReadOnly)
	wantErr(t, err, fs.NotExist, "f")
	wantErr(t, root.Remove(ctx, "f"), fs.NotExist, "f")

	// A new file of the same name is not the removed node.
	put(t, root, "f", []byte("again"))
	_, err = f.Stat(ctx)
	wantErr(t, err, fs.NotExist, "f")

	if err := sub.Remove(ctx, "g"); err != nil {
		t.Fatal(err)
	}
	if err := root.Remove(ctx, "d"); err != nil {
		t.Fatal(err)
	}
	_, err = sub.ReadDir(ctx)
	wantErr(t, err, fs.NotExist, "d")
	_, _, err = sub.Create(ctx, "h", fs.ReadWrite, 0o644)
	wantErr(t, err, fs.NotExist, "d")
}

func TestRename(t *testing.T) {
	s, dir := open(t)
	root := s.Root()
	a, _ := root.Mkdir(ctx, "a", 0o755)
	b, _ := root.Mkdir(ctx, "b", 0o755)
	f := put(t, a, "f", []byte("f"))
	put(t, a, "g", []byte("g"))
	deep, _ := a.Mkdir(ctx, "deep", 0o755)
	leaf := put(t, deep, "leaf", []byte("leaf"))

	if err := a.Rename(ctx, "f", a, "f2"); err != nil {
		t.Fatal(err)
	}
	expect(t, a, "f2", "f")
	if info, err := f.Stat(ctx); err != nil || info.Name != "f2" {
		t.Errorf("the renamed node stats %+v, %v", info, err)
	}
	if err := a.Rename(ctx, "f2", b, "f3"); err != nil {
		t.Fatal(err)
	}
	expect(t, b, "f3", "f")
	expect(t, b, "f3", string(readAll(t, must(f.Open(ctx, fs.ReadOnly)))))

	// Over an existing file, which is replaced.
	if err := a.Rename(ctx, "g", b, "f3"); err != nil {
		t.Fatal(err)
	}
	expect(t, b, "f3", "g")
	_, err := f.Stat(ctx)
	wantErr(t, err, fs.NotExist, "b/f3")

	// A directory, with the nodes in it.
	if err := a.Rename(ctx, "deep", root, "moved"); err != nil {
		t.Fatal(err)
	}
	expect(t, deep, "leaf", "leaf")
	if info, err := leaf.Stat(ctx); err != nil || info.Size != 4 {
		t.Errorf("a file in a moved directory stats %+v, %v", info, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "moved", "leaf")); err != nil {
		t.Error(err)
	}
	if err := root.Rename(ctx, "moved", root, "moved"); err != nil {
		t.Errorf("rename onto itself: %v", err)
	}

	wantErr(t, a.Rename(ctx, "nothing", a, "x"), fs.NotExist, "a/nothing")
	wantErr(t, root.Rename(ctx, "a", root, "b"), fs.Exist, "a")
	wantErr(t, root.Rename(ctx, "a", a, "inside"), fs.Invalid, "a")
	other, _ := open(t)
	wantErr(t, root.Rename(ctx, "a", other.Root(), "a"), fs.CrossDevice, "a")
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestRewriteMeetsRenameAndRemove(t *testing.T) {
	s, dir := open(t)
	root := s.Root()
	d, _ := root.Mkdir(ctx, "d", 0o755)
	f := put(t, d, "f", []byte("old"))

	// The file moves while it is rewritten: the rewrite follows it.
	h, _ := f.Open(ctx, fs.WriteOnly|fs.Truncate)
	write(t, h, []byte("new"), 0)
	if err := d.Rename(ctx, "f", root, "f"); err != nil {
		t.Fatal(err)
	}
	if err := root.Rename(ctx, "d", root, "e"); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	expect(t, root, "f", "new")
	if tt := temps(t, dir); len(tt) != 0 {
		t.Errorf("temporary files left: %v", tt)
	}

	// The file is removed while it is rewritten: the rewrite is lost.
	h, _ = f.Open(ctx, fs.WriteOnly|fs.Truncate)
	write(t, h, []byte("newer"), 0)
	if err := root.Remove(ctx, "f"); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := root.Lookup(ctx, "f"); !errors.Is(err, iofs.ErrNotExist) {
		t.Errorf("lookup f after removal and close: %v", err)
	}

	// A directory whose only entry is being written can be removed.
	e := lookupDir(t, root, "e")
	_, h, err := e.Create(ctx, "g", fs.WriteOnly, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	write(t, h, []byte("g"), 0)
	if err := e.Remove(ctx, "g"); err != nil {
		t.Fatal(err)
	}
	if err := root.Remove(ctx, "e"); err != nil {
		t.Fatalf("remove a directory with a pending rewrite: %v", err)
	}
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if tt := temps(t, dir); len(tt) != 0 {
		t.Errorf("temporary files left: %v", tt)
	}
}

func TestNames(t *testing.T) {
	s, _ := open(t)
	root := s.Root()
	d, _ := root.Mkdir(ctx, "d", 0o755)
	put(t, d, "f", nil)
	for _, bad := range []string{"", ".", "..", "a/b", "/", "x\x00y"} {
		_, err := d.Lookup(ctx, bad)
		wantErr(t, err, fs.Invalid, "d/"+strings.ReplaceAll(bad, "\x00", `\0`))
		_, _, err = d.Create(ctx, bad, fs.ReadWrite, 0o644)
		wantErr(t, err, fs.Invalid, "d/"+strings.ReplaceAll(bad, "\x00", `\0`))
		if _, err := d.Mkdir(ctx, bad, 0o755); fs.KindOf(err) != fs.Invalid {
			t.Errorf("mkdir %q: %v", bad, err)
		}
		if err := d.Remove(ctx, bad); fs.KindOf(err) != fs.Invalid {
			t.Errorf("remove %q: %v", bad, err)
		}
		if err := d.Rename(ctx, "f", d, bad); fs.KindOf(err) != fs.Invalid {
			t.Errorf("rename to %q: %v", bad, err)
		}
	}
	long := strings.Repeat("n", fs.MaxNameLen+1)
	_, _, err := d.Create(ctx, long, fs.ReadWrite, 0o644)
	if fs.KindOf(err) != fs.NameTooLong {
		t.Errorf("create a long name: %v", err)
	}
	put(t, d, strings.Repeat("n", fs.MaxNameLen), []byte("x"))

	tmp := TempPrefix + "x"
	_, err = d.Lookup(ctx, tmp)
	wantErr(t, err, fs.Invalid, "d/"+tmp)
	if want := "lookup d/" + tmp + ": invalid argument: name reserved for the store's temporary files"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	_, _, err = d.Create(ctx, tmp, fs.ReadWrite, 0o644)
	wantErr(t, err, fs.Invalid, "d/"+tmp)
	_, err = d.Mkdir(ctx, tmp, 0o755)
	wantErr(t, err, fs.Invalid, "d/"+tmp)
	wantErr(t, d.Remove(ctx, tmp), fs.Invalid, "d/"+tmp)
	wantErr(t, d.Rename(ctx, "f", d, tmp), fs.Invalid, "d/"+tmp)
	wantErr(t, d.Rename(ctx, tmp, d, "g"), fs.Invalid, "d/"+tmp)
}

func TestErrorMessages(t *testing.T) {
	s, _ := open(t)
	root := s.Root()
	d, _ := root.Mkdir(ctx, "d", 0o755)
	put(t, d, "f", nil)
	_, lerr := d.Lookup(ctx, "missing")
	_, merr := root.Mkdir(ctx, "d", 0o755)
	for _, c := range []struct {
		err  error
		want string
	}{
		{lerr, "lookup d/missing: file does not exist"},
		{root.Remove(ctx, "d"), "remove d: directory not empty"},
		{merr, "mkdir d: file already exists"},
		{d.Rename(ctx, "nope", root, "x"), "rename d/nope: file does not exist"},
	} {
		if c.err == nil || c.err.Error() != c.want {
			t.Errorf("error %v, want %q", c.err, c.want)
		}
	}
}

func TestHandleErrors(t *testing.T) {
	s, _ := open(t)
	root := s.Root()
	f := put(t, root, "f", []byte("data"))

	ro, _ := f.Open(ctx, fs.ReadOnly)
	_, err := ro.WriteAt(ctx, []byte("x"), 0)
	wantErr(t, err, fs.BadHandle, "f")
	if !errors.Is(err, syscall.EBADF) {
		t.Errorf("%v is not EBADF", err)
	}
	wo, _ := f.Open(ctx, fs.WriteOnly)
	_, err = wo.ReadAt(ctx, make([]byte, 1), 0)
	wantErr(t, err, fs.BadHandle, "f")
	_, err = wo.WriteAt(ctx, []byte("x"), -1)
	wantErr(t, err, fs.Invalid, "f")

	for _, h := range []fs.Handle{ro, wo} {
		if err := h.Close(ctx); err != nil {
			t.Fatal(err)
		}
		wantErr(t, h.Close(ctx), fs.BadHandle, "f")
		_, err := h.ReadAt(ctx, make([]byte, 1), 0)
		wantErr(t, err, fs.BadHandle, "f")
		_, err = h.WriteAt(ctx, []byte("x"), 0)
		wantErr(t, err, fs.BadHandle, "f")
		wantErr(t, h.Sync(ctx), fs.BadHandle, "f")
	}
	_, err = f.Open(ctx, fs.ReadWrite|fs.CreateNew|fs.Excl)
	wantErr(t, err, fs.Exist, "f")

	// Close from many goroutines at once: one succeeds.
	h, _ := f.Open(ctx, fs.ReadWrite|fs.Truncate)
	errs := make(chan error, 4)
	for range 4 {
		go func() { errs <- h.Close(ctx) }()
	}
	ok := 0
	for range 4 {
		if err := <-errs; err == nil {
			ok++
		} else {
			wantErr(t, err, fs.BadHandle, "f")
		}
	}
	if ok != 1 {
		t.Errorf("%d of 4 concurrent Closes succeeded", ok)
	}
}

func TestContext(t *testing.T) {
	s, _ := open(t)
	root := s.Root()
	f := put(t, root, "f", nil)
	h, _ := f.Open(ctx, fs.ReadWrite)
	defer h.Close(ctx)
	done, cancel := context.WithCancel(ctx)
	cancel()
	_, err := root.Lookup(done, "f")
	wantErr(t, err, fs.Canceled, "f")
	if !errors.Is(err, context.Canceled) {
		t.Errorf("%v is not context.Canceled", err)
	}
	_, err = f.Open(done, fs.ReadOnly)
	wantErr(t, err, fs.Canceled, "f")
	_, err = h.WriteAt(done, []byte("x"), 0)
	wantErr(t, err, fs.Canceled, "f")
	late, cancel := context.WithDeadline(ctx, time.Now().Add(-time.Second))
	defer cancel()
	_, err = root.ReadDir(late)
	wantErr(t, err, fs.Timeout, "")
}

func TestClose(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	root := s.Root()
	f := put(t, root, "f", []byte("kept"))
	h, _ := f.Open(ctx, fs.WriteOnly|fs.Truncate)
	write(t, h, []byte("dropped"), 0)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = root.Lookup(ctx, "f")
	wantErr(t, err, fs.BadHandle, "f")
	_, err = f.Open(ctx, fs.ReadOnly)
	wantErr(t, err, fs.BadHandle, "f")
	_, err = h.WriteAt(ctx, []byte("x"), 0)
	wantErr(t, err, fs.BadHandle, "f")
	wantErr(t, h.Close(ctx), fs.BadHandle, "f")
	if tt := temps(t, dir); len(tt) != 0 {
		t.Errorf("temporary files left: %v", tt)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "f")); string(b) != "kept" {
		t.Errorf("f holds %q after a close that dropped its rewrite", b)
	}
}

// crash stops s as kill -9 would: every descriptor is closed, and nothing
// is synced, renamed or removed.
func crash(s *Store) {
	s.mu.Lock()
	s.closed.Store(true)
	var open []*handle
	for h := range s.handles {
		open = append(open, h)
	}
	s.handles = nil
	s.mu.Unlock()
	for _, h := range open {
		h.mu.Lock()
		h.f.Close()
		h.f = nil
		h.mu.Unlock()
	}
	s.disk.Close()
}

func TestCrashDuringRewrite(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	root := s.Root()
	d, _ := root.Mkdir(ctx, "d", 0o755)
	put(t, d, "old", []byte("acknowledged"))
	h, _ := lookupFile(t, d, "old").Open(ctx, fs.ReadWrite|fs.Truncate)
	write(t, h, []byte("never acknowledged"), 0)
	_, h2, _ := root.Create(ctx, "new", fs.WriteOnly, 0o644)
	write(t, h2, []byte("lost"), 0)
	if tt := temps(t, dir); len(tt) != 2 {
		t.Fatalf("temporary files before the crash: %v", tt)
	}
	crash(s)

	s, err = Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	expect(t, lookupDir(t, s.Root(), "d"), "old", "acknowledged")
	expect(t, s.Root(), "new", "")
	if tt := temps(t, dir); len(tt) != 0 {
		t.Errorf("temporary files not swept: %v", tt)
	}
}

func TestNodesAreCollected(t *testing.T) {
	s, _ := open(t)
	root := s.Root()
	put(t, root, "f", nil)
	for i := range 100 {
		d, _ := root.Mkdir(ctx, "d"+string(rune('a'+i%26))+strings.Repeat("x", i/26), 0o755)
		d.Stat(ctx)
	}
	count := func() int {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.nodes.Len()
	}
	for range 50 {
		if count() <= 1 {
			return
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("%d nodes still registered after collection", count())
}

func TestRenameMovesOnlyItsNodes(t *testing.T) {
	s, _ := open(t)
	root := s.Root()
	a, _ := root.Mkdir(ctx, "a", 0o755)
	ab := put(t, root, "ab", []byte("ab"))
	inA := put(t, a, "x", []byte("x"))
	if err := root.Rename(ctx, "a", root, "b"); err != nil {
		t.Fatal(err)
	}
	if info, err := ab.Stat(ctx); err != nil || info.Name != "ab" {
		t.Errorf("ab after renaming a: %+v, %v", info, err)
	}
	if info, err := inA.Stat(ctx); err != nil || info.Name != "x" {
		t.Errorf("a/x after renaming a: %+v, %v", info, err)
	}
	if info, err := a.Stat(ctx); err != nil || info.Name != "b" {
		t.Errorf("a after its rename: %+v, %v", info, err)
	}
	put(t, a, "y", []byte("y"))
	expect(t, lookupDir(t, root, "b"), "y", "y")
}

func TestLog(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "d"), 0o755)
	os.WriteFile(filepath.Join(dir, "d", TempPrefix+"1"), nil, 0o600)
	var buf bytes.Buffer
	s, err := Open(dir, slog.New(slog.NewTextHandler(&buf, nil)))
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if out := buf.String(); !strings.Contains(out, "swept=1") || !strings.Contains(out, "store: closed") {
		t.Errorf("log:\n%s", out)
	}
}
