package store

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"strata/fs"
)

// TestRenameOverDir: rename follows rename(2) when the target is a
// directory: a directory replaces an empty one, and nothing else goes over
// a directory.
func TestRenameOverDir(t *testing.T) {
	s, dir := open(t)
	root := s.Root()
	src, _ := root.Mkdir(ctx, "src", 0o750)
	leaf := put(t, src, "leaf", []byte("leaf"))
	empty, _ := root.Mkdir(ctx, "empty", 0o700)
	emptyIno := inode(t, filepath.Join(dir, "empty"))

	// Over an empty directory: replaced, in one rename.
	if err := root.Rename(ctx, "src", root, "empty"); err != nil {
		t.Fatalf("rename a directory over an empty one: %v", err)
	}
	expect(t, lookupDir(t, root, "empty"), "leaf", "leaf")
	if _, err := root.Lookup(ctx, "src"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lookup src after the rename: %v", err)
	}
	if ino := inode(t, filepath.Join(dir, "empty")); ino == emptyIno {
		t.Errorf("empty is still the directory that was replaced (inode %d)", ino)
	}
	if info, err := lookupDir(t, root, "empty").Stat(ctx); err != nil || info.Mode.Perm() != 0o750 {
		t.Errorf("empty stats %+v, %v; want the moved directory's mode 0750", info, err)
	}
	// The nodes follow: the moved directory's, and those in it, are at
	// the new name; the replaced directory's is gone.
	if info, err := src.Stat(ctx); err != nil || info.Name != "empty" {
		t.Errorf("the moved directory's node stats %+v, %v", info, err)
	}
	if info, err := leaf.Stat(ctx); err != nil || info.Size != 4 {
		t.Errorf("a file in the moved directory stats %+v, %v", info, err)
	}
	_, err := empty.Stat(ctx)
	wantErr(t, err, fs.NotExist, "empty")
	_, err = empty.ReadDir(ctx)
	wantErr(t, err, fs.NotExist, "empty")

	// Across directories.
	a, _ := root.Mkdir(ctx, "a", 0o755)
	if _, err := a.Mkdir(ctx, "slot", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := root.Rename(ctx, "empty", a, "slot"); err != nil {
		t.Fatalf("rename over an empty directory in another directory: %v", err)
	}
	expect(t, lookupDir(t, a, "slot"), "leaf", "leaf")
	if _, err := os.Stat(filepath.Join(dir, "a", "slot", "leaf")); err != nil {
		t.Error(err)
	}

	// Over a directory that is not empty: refused, and both stay.
	full, _ := root.Mkdir(ctx, "full", 0o755)
	put(t, full, "keep", []byte("keep"))
	err = a.Rename(ctx, "slot", root, "full")
	wantErr(t, err, fs.Exist, "a/slot")
	expect(t, full, "keep", "keep")
	expect(t, lookupDir(t, a, "slot"), "leaf", "leaf")

	// A directory over a file, and a file over a directory.
	put(t, root, "file", []byte("file"))
	wantErr(t, a.Rename(ctx, "slot", root, "file"), fs.NotDir, "a/slot")
	wantErr(t, root.Rename(ctx, "file", a, "slot"), fs.IsDir, "file")
	if err := root.Rename(ctx, "file", root, "file"); err != nil {
		t.Errorf("rename onto itself: %v", err)
	}
	expect(t, root, "file", "file")
	expect(t, lookupDir(t, a, "slot"), "leaf", "leaf")

	// A directory into itself.
	wantErr(t, root.Rename(ctx, "a", lookupDir(t, a, "slot"), "a"), fs.Invalid, "a")

	// The errno a client sees.
	for _, c := range []struct {
		err   error
		errno syscall.Errno
	}{
		{a.Rename(ctx, "slot", root, "full"), syscall.EEXIST},
		{a.Rename(ctx, "slot", root, "file"), syscall.ENOTDIR},
		{root.Rename(ctx, "file", a, "slot"), syscall.EISDIR},
	} {
		if got := fs.ErrnoOf(c.err); got != c.errno {
			t.Errorf("%v: errno %v, want %v", c.err, got, c.errno)
		}
	}
	if tt := temps(t, dir); len(tt) != 0 {
		t.Errorf("temporary files left: %v", tt)
	}
}

// TestRenameOverDirWithRewrite: a directory that looks empty but holds
// the temporary file of a pending rewrite (whose file was removed) is
// replaced as an empty one, and the rewrite is lost, as with Remove.
func TestRenameOverDirWithRewrite(t *testing.T) {
	s, dir := open(t)
	root := s.Root()
	src, _ := root.Mkdir(ctx, "src", 0o755)
	put(t, src, "f", []byte("moved"))
	busy, _ := root.Mkdir(ctx, "busy", 0o755)
	g := put(t, busy, "g", []byte("old"))
	h, err := g.Open(ctx, fs.WriteOnly|fs.Truncate)
	if err != nil {
		t.Fatal(err)
	}
	write(t, h, []byte("new"), 0)
	if err := busy.Remove(ctx, "g"); err != nil {
		t.Fatal(err)
	}
	if len(temps(t, dir)) != 1 {
		t.Fatalf("want the rewrite's temporary file in busy: %v", temps(t, dir))
	}
	if err := root.Rename(ctx, "src", root, "busy"); err != nil {
		t.Fatalf("rename over a directory holding only a temporary file: %v", err)
	}
	expect(t, lookupDir(t, root, "busy"), "f", "moved")
	if err := h.Close(ctx); err != nil {
		t.Errorf("closing the lost rewrite: %v", err)
	}
	list, err := lookupDir(t, root, "busy").ReadDir(ctx)
	if err != nil || len(list) != 1 || list[0].Name != "f" {
		t.Errorf("busy lists %+v, %v; want f alone", list, err)
	}
	if tt := temps(t, dir); len(tt) != 0 {
		t.Errorf("temporary files left: %v", tt)
	}
}

// TestHandleStatAfterRemove: a handle describes the file it has open
// after its name is removed or taken by another file.
func TestHandleStatAfterRemove(t *testing.T) {
	s, _ := open(t)
	root := s.Root()
	f := put(t, root, "f", []byte("twelve bytes"))
	before, err := f.Stat(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h, err := f.Open(ctx, fs.ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close(ctx)
	hs, ok := h.(fs.HandleStater)
	if !ok {
		t.Fatalf("%T is not an fs.HandleStater", h)
	}
	check := func(when string) {
		t.Helper()
		info, err := hs.Stat(ctx)
		if err != nil {
			t.Fatalf("handle stat %s: %v", when, err)
		}
		if info.Size != before.Size || info.ID != before.ID || info.Mode != before.Mode || !info.ModTime.Equal(before.ModTime) {
			t.Errorf("handle stat %s: %+v, want %+v", when, info, before)
		}
	}
	check("while the name is there")
	if err := root.Remove(ctx, "f"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Stat(ctx); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the node after the remove: %v", err)
	}
	check("after the name was removed")
	if got := readAll(t, h); string(got) != "twelve bytes" {
		t.Errorf("read after the remove: %q", got)
	}

	// Replaced by a rename.
	g := put(t, root, "g", []byte("g"))
	hg, err := g.Open(ctx, fs.ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	defer hg.Close(ctx)
	put(t, root, "other", []byte("another, longer file"))
	if err := root.Rename(ctx, "other", root, "g"); err != nil {
		t.Fatal(err)
	}
	if info, err := hg.(fs.HandleStater).Stat(ctx); err != nil || info.Size != 1 {
		t.Errorf("handle stat after its name was taken: %+v, %v; want size 1", info, err)
	}
}

// renameDirWorkload moves directories over empty ones: in one directory,
// across directories, and over one that holds only a pending rewrite.
func renameDirWorkload(w *workload) {
	w.mkdir("a")
	w.create("h1", "a/f", 0o644, fs.WriteOnly, "f1")
	w.write("h1", 0, 700)
	w.close("h1")
	w.mkdir("b")
	w.rename("a", "b")

	w.mkdir("c")
	w.mkdir("c/d")
	w.create("h2", "c/d/g", 0o600, fs.WriteOnly, "g1")
	w.write("h2", 0, 300)
	w.close("h2")
	w.mkdir("e")
	w.rename("c/d", "e")
	w.rename("e", "c/d")

	// A target that looks empty: its only entry is a rewrite's
	// temporary file, whose file was removed.
	w.mkdir("t")
	w.create("h3", "t/x", 0o644, fs.WriteOnly|fs.Excl, "x1")
	w.write("h3", 0, 100)
	w.close("h3")
	w.open("h4", "t/x", fs.WriteOnly|fs.Truncate, "x2")
	w.write("h4", 0, 900)
	w.remove("t/x")
	w.rename("b", "t")
	w.close("h4")

	// A directory with a file being rewritten moves over an empty one.
	w.mkdir("u")
	w.open("h5", "t/f", fs.WriteOnly|fs.Truncate, "f2")
	w.write("h5", 0, 400)
	w.rename("t", "u")
	w.close("h5")
}

// TestCrashPointsRenameDir cuts the power at every call of
// renameDirWorkload.
func TestCrashPointsRenameDir(t *testing.T) {
	seeds := []uint64{0, 1, 2, 3, 4, 5}
	total := countCalls(t, renameDirWorkload)
	failed := 0
	for point := 1; point <= total+1; point++ {
		for _, msg := range crashRun(renameDirWorkload, point, seeds...) {
			t.Error(msg)
			if failed++; failed == maxReported {
				t.Fatalf("stopping after %d failures", failed)
			}
		}
	}
	t.Logf("%d crash points x %d seeds", total+1, len(seeds))
}

// TestRenameOverDirEscape: a directory renamed over a directory never
// reaches outside the store through a directory swapped for a link: not
// the empty directory there, nor the one moved.
func TestRenameOverDirEscape(t *testing.T) {
	s, dir := open(t)
	root := s.Root()
	outside := t.TempDir()
	for _, name := range []string{"empty", "victim"} {
		if err := os.Mkdir(filepath.Join(outside, name), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(outside, "victim", "keep"), []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	intact := func(what string) {
		t.Helper()
		if fi, err := os.Stat(filepath.Join(outside, "empty")); err != nil || !fi.IsDir() {
			t.Errorf("%s: the empty directory outside: %v", what, err)
		}
		if b, err := os.ReadFile(filepath.Join(outside, "victim", "keep")); err != nil || string(b) != "keep" {
			t.Errorf("%s: the directory outside: %q, %v", what, b, err)
		}
	}
	d, err := root.Mkdir(ctx, "d", 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := root.Mkdir(ctx, "src", 0o755); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dir, "d"))
	if err := os.Symlink(outside, filepath.Join(dir, "d")); err != nil {
		t.Fatal(err)
	}
	wantErr(t, root.Rename(ctx, "src", d, "empty"), fs.Permission, "src")
	wantErr(t, d.Rename(ctx, "victim", root, "src"), fs.Permission, "d/victim")
	intact("renames through a link out")
	if fi, err := os.Stat(filepath.Join(dir, "src")); err != nil || !fi.IsDir() {
		t.Errorf("src after the refused renames: %v", err)
	}
	// A link to a directory at the target is an entry like a file: a
	// directory does not go over it, and nothing outside changes.
	os.Remove(filepath.Join(dir, "d"))
	if err := os.Symlink(filepath.Join(outside, "empty"), filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	wantErr(t, root.Rename(ctx, "src", root, "link"), fs.NotDir, "src")
	intact("a rename over a link")
}
