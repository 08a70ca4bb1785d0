package store

import (
	"path/filepath"
	"testing"

	"strata/fs"
)

// TestIdleRewrite: a rewrite that writes nothing to a file that is empty
// and unchanged leaves the file as it is, with its inode and times (a
// file made by Create and closed at once, or emptied again with
// Truncate); one whose file changed meanwhile still replaces it.
func TestIdleRewrite(t *testing.T) {
	s, dir := open(t)
	root := s.Root()
	p := filepath.Join(dir, "f")

	f, h, err := root.Create(ctx, "f", fs.WriteOnly, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	created := inode(t, p)
	before, err := f.Stat(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	after, err := f.Stat(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ino := inode(t, p); ino != created || after.ID != before.ID || !after.ModTime.Equal(before.ModTime) || after.Mode != before.Mode {
		t.Errorf("a new file closed with nothing written: inode %d (was %d), %+v (was %+v)", ino, created, after, before)
	}

	// Opened with Truncate, nothing written: the same file.
	h, err = f.Open(ctx, fs.WriteOnly|fs.Truncate)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if ino := inode(t, p); ino != created {
		t.Errorf("an empty file opened with Truncate and closed: inode %d, was %d", ino, created)
	}

	// Changed meanwhile: the rewrite (empty) replaces it.
	h, err = f.Open(ctx, fs.WriteOnly|fs.Truncate)
	if err != nil {
		t.Fatal(err)
	}
	size := int64(5)
	if err := f.SetAttr(ctx, fs.Attr{Size: &size}); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	expect(t, root, "f", "")
	if ino := inode(t, p); ino == created {
		t.Errorf("a rewrite of a file changed meanwhile left it in place")
	}
	if tt := temps(t, dir); len(tt) != 0 {
		t.Errorf("temporary files left: %v", tt)
	}
}

// idleWorkload closes rewrites that wrote nothing: of a new file, of an
// empty file, of an empty file changed meanwhile (its mode), and of a new
// file moved meanwhile.
func idleWorkload(w *workload) {
	w.mkdir("d")
	w.create("h1", "d/new", 0o640, fs.WriteOnly|fs.Excl, "new1")
	w.close("h1")
	w.open("h2", "d/new", fs.WriteOnly|fs.Truncate, "new2")
	w.close("h2")
	w.create("h3", "e", 0o600, fs.ReadWrite, "e1")
	w.chmod("e", 0o644)
	w.close("h3")
	w.open("h4", "e", fs.WriteOnly|fs.Truncate, "e2")
	w.write("h4", 0, 300)
	w.close("h4")
	w.create("h5", "g", 0o644, fs.WriteOnly, "g1")
	w.rename("g", "d/g")
	w.close("h5")
}

// TestCrashPointsIdleRewrite cuts the power at every call of
// idleWorkload.
func TestCrashPointsIdleRewrite(t *testing.T) {
	seeds := []uint64{0, 1, 2, 3, 4, 5}
	total := countCalls(t, idleWorkload)
	failed := 0
	for point := 1; point <= total+1; point++ {
		for _, msg := range crashRun(idleWorkload, point, seeds...) {
			t.Error(msg)
			if failed++; failed == maxReported {
				t.Fatalf("stopping after %d failures", failed)
			}
		}
	}
	t.Logf("%d crash points x %d seeds", total+1, len(seeds))
}
