package ninep

import (
	"path/filepath"
	"testing"

	"github.com/hugelgupf/p9/p9"

	"strata/fs/store"
)

// TestLinuxGetattrOpenFid: a getattr on an open fid describes the file
// it has open, as fstat(2) does, after the name is unlinked or taken by
// another file; a fid that is not open describes the node at its path.
func TestLinuxGetattrOpenFid(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	addr, _ := startL(t, st.Root())
	_, root := dialL(t, addr, 1<<16)

	create := func(name, content string) {
		t.Helper()
		d := walkTo(t, root)
		defer d.Close()
		f, _, _, err := d.Create(name, p9.WriteOnly, 0o640, p9.NoUID, p9.NoGID)
		if err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
		if _, err := f.WriteAt([]byte(content), 0); err != nil {
			t.Fatalf("write %s: %v", name, err)
		}
		if err := f.Close(); err != nil {
			t.Fatalf("close %s: %v", name, err)
		}
	}
	getattr := func(f p9.File, what string) (p9.QID, p9.Attr) {
		t.Helper()
		qid, valid, attr, err := f.GetAttr(p9.AttrMaskAll)
		if err != nil {
			t.Fatalf("getattr %s: %v", what, err)
		}
		if !valid.Size {
			t.Fatalf("getattr %s: no size", what)
		}
		return qid, attr
	}

	create("f", "seven b")
	open := walkTo(t, root, "f")
	defer open.Close()
	if _, _, err := open.Open(p9.ReadOnly); err != nil {
		t.Fatal(err)
	}
	qid0, attr0 := getattr(open, "before the unlink")
	if attr0.Size != 7 || attr0.Mode.Permissions() != 0o640 {
		t.Fatalf("getattr before the unlink: %+v", attr0)
	}
	if err := root.UnlinkAt("f", 0); err != nil {
		t.Fatal(err)
	}
	qid1, attr1 := getattr(open, "after the unlink")
	if qid1 != qid0 || attr1.Size != attr0.Size || attr1.Mode != attr0.Mode ||
		attr1.MTimeSeconds != attr0.MTimeSeconds || attr1.MTimeNanoSeconds != attr0.MTimeNanoSeconds {
		t.Errorf("getattr after the unlink: %v %+v; want %v %+v", qid1, attr1, qid0, attr0)
	}
	if got := readAll(t, open); string(got) != "seven b" {
		t.Errorf("read after the unlink: %q", got)
	}

	// Replaced by a rename: the open fid keeps its file; a fid walked
	// to the name, not open, finds the new one.
	create("g", "g")
	og := walkTo(t, root, "g")
	defer og.Close()
	if _, _, err := og.Open(p9.ReadOnly); err != nil {
		t.Fatal(err)
	}
	qidG, _ := getattr(og, "g before the rename")
	create("h", "a longer file")
	if err := root.RenameAt("h", root, "g"); err != nil {
		t.Fatal(err)
	}
	if qid, attr := getattr(og, "g after the rename"); attr.Size != 1 || qid != qidG {
		t.Errorf("the open fid after a rename over its name: %v size %d; want %v size 1", qid, attr.Size, qidG)
	}
	named := walkTo(t, root, "g")
	defer named.Close()
	if qid, attr := getattr(named, "a fid walked to g"); attr.Size != 13 || qid == qidG {
		t.Errorf("a fid walked to g after the rename: %v size %d; want the new file, 13 bytes", qid, attr.Size)
	}
}
