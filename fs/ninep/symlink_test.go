package ninep

import (
	"errors"
	iofs "io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"9fans.net/go/plan9"
	"github.com/hugelgupf/p9/p9"

	"strata/fs/store"
)

// symlinkSecret is what the sentinel outside the store holds.
const symlinkSecret = "secret"

// symlinkFixture is a store with symbolic links planted in it, on disk,
// that point at a sentinel file beside the store.
type symlinkFixture struct {
	base     string // the sentinel's directory; the store is base/store
	sentinel string
	storeDir string
	mtime    time.Time
	mode     iofs.FileMode
	entries  []string // base's entries once set up
	links    map[string]string
}

func newSymlinkFixture(t *testing.T) *symlinkFixture {
	t.Helper()
	base := t.TempDir()
	x := &symlinkFixture{
		base:     base,
		sentinel: filepath.Join(base, "sentinel.txt"),
		storeDir: filepath.Join(base, "store"),
		mtime:    time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC),
	}
	if err := os.WriteFile(x.sentinel, []byte(symlinkSecret), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(x.sentinel, x.mtime, x.mtime); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(x.sentinel)
	if err != nil {
		t.Fatal(err)
	}
	x.mtime, x.mode = fi.ModTime(), fi.Mode()
	x.links = map[string]string{
		"out":    x.sentinel,
		"rel":    "../" + filepath.Base(x.sentinel),
		"dirout": base,
	}
	return x
}

// plant (re)creates every link in the store directory and checks that
// each one, followed by the OS, reaches the sentinel or its directory.
func (x *symlinkFixture) plant(t *testing.T) {
	t.Helper()
	for name, target := range x.links {
		p := filepath.Join(x.storeDir, name)
		if err := os.Remove(p); err != nil && !errors.Is(err, iofs.ErrNotExist) {
			t.Fatal(err)
		}
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
		want := x.sentinel
		if name == "dirout" {
			want = x.base
		}
		got, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		wfi, err := os.Stat(want)
		if err != nil {
			t.Fatal(err)
		}
		if !os.SameFile(got, wfi) {
			t.Fatalf("planted link %s does not reach %s", name, want)
		}
	}
}

// isLink reports whether name in the store is still the planted link.
func (x *symlinkFixture) isLink(name string) bool {
	fi, err := os.Lstat(filepath.Join(x.storeDir, name))
	return err == nil && fi.Mode()&iofs.ModeSymlink != 0
}

// intact checks that the sentinel and its directory are as set up.
func (x *symlinkFixture) intact(t *testing.T, after string) {
	t.Helper()
	fi, err := os.Lstat(x.sentinel)
	if err != nil {
		t.Fatalf("after %s: the sentinel: %v", after, err)
	}
	if !fi.Mode().IsRegular() || fi.Mode() != x.mode || !fi.ModTime().Equal(x.mtime) || fi.Size() != int64(len(symlinkSecret)) {
		t.Errorf("after %s: the sentinel is %v, %d bytes, mtime %v; want %v, %d bytes, mtime %v",
			after, fi.Mode(), fi.Size(), fi.ModTime(), x.mode, len(symlinkSecret), x.mtime)
	}
	if b, err := os.ReadFile(x.sentinel); err != nil || string(b) != symlinkSecret {
		t.Errorf("after %s: the sentinel holds %q (%v)", after, b, err)
	}
	if got := symlinkEntries(t, x.base); !slices.Equal(got, x.entries) {
		t.Errorf("after %s: the sentinel's directory holds %q, want %q", after, got, x.entries)
	}
}

func symlinkEntries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// symlinkMustFail fails the test if err is nil and logs the error text.
func symlinkMustFail(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: succeeded, want an error", what)
		return
	}
	t.Logf("%s: %v", what, err)
}

// symlinkNoSecret fails the test if b is the sentinel's content.
func symlinkNoSecret(t *testing.T, what string, b []byte) {
	t.Helper()
	if string(b) == symlinkSecret {
		t.Errorf("%s: read the sentinel outside the store", what)
	}
}

// TestPlantedSymlinkThroughBothDialects: symbolic links planted in a
// store's directory (absolute, relative, and to a directory) lead nowhere
// through either dialect: no read or write through them reaches the file
// outside, replacing or removing a link touches only the link, and the
// server stays up.
func TestPlantedSymlinkThroughBothDialects(t *testing.T) {
	x := newSymlinkFixture(t)
	st, err := store.Open(x.storeDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if err := os.WriteFile(filepath.Join(x.storeDir, "plain"), []byte("inside"), 0o644); err != nil {
		t.Fatal(err)
	}
	x.plant(t)
	x.entries = symlinkEntries(t, x.base)
	addr := plan9Serve(t, st.Root())
	names := []string{"out", "rel", "dirout"}

	t.Run("9P2000", func(t *testing.T) {
		x.plant(t)
		_, fsys := plan9Mount(t, addr, "glenda")
		for _, name := range names {
			_, err := fsys.Stat(name)
			symlinkMustFail(t, "stat "+name, err)

			for _, mode := range []uint8{plan9.OREAD, plan9.OWRITE, plan9.ORDWR, plan9.OWRITE | plan9.OTRUNC} {
				fid, err := fsys.Open(name, mode)
				symlinkMustFail(t, "open "+name+" mode "+symlinkMode(mode), err)
				if err == nil {
					b := make([]byte, 64)
					n, _ := fid.ReadAt(b, 0)
					symlinkNoSecret(t, "read "+name, b[:n])
					fid.WriteAt([]byte("pwned"), 0)
					fid.Close()
				}
			}

			fid, err := fsys.Create(name, plan9.OWRITE|plan9.OTRUNC, 0o644)
			symlinkMustFail(t, "create "+name+" with OTRUNC", err)
			if err == nil {
				fid.Write([]byte("pwned"))
				fid.Close()
			}
			fid, err = fsys.Create(name, plan9.OREAD, plan9.DMDIR|0o755)
			symlinkMustFail(t, "create directory "+name, err)
			if err == nil {
				fid.Close()
			}

			for _, what := range []struct {
				desc string
				set  func(*plan9.Dir)
			}{
				{"truncate", func(d *plan9.Dir) { d.Length = 0 }},
				{"chmod", func(d *plan9.Dir) { d.Mode = 0o777 }},
				{"set mtime", func(d *plan9.Dir) { d.Mtime = uint32(time.Now().Unix()) }},
				{"rename away", func(d *plan9.Dir) { d.Name = name + "-moved" }},
			} {
				var d plan9.Dir
				d.Null()
				what.set(&d)
				symlinkMustFail(t, "wstat "+what.desc+" "+name, fsys.Wstat(name, &d))
			}
			if !x.isLink(name) {
				t.Errorf("after the wstats, %s is no longer the planted link", name)
			}
			if _, err := os.Lstat(filepath.Join(x.storeDir, name+"-moved")); err == nil {
				t.Errorf("%s-moved exists after a failed rename", name)
			}

			err = fsys.Remove(name)
			symlinkMustFail(t, "remove "+name, err)
			x.intact(t, "9P2000 ops on "+name)
		}

		// Through the link to a directory.
		for _, p := range []string{"dirout/sentinel.txt", "dirout/store/plain", "dirout/new.txt"} {
			_, err := fsys.Stat(p)
			symlinkMustFail(t, "stat "+p, err)
			fid, err := fsys.Open(p, plan9.OREAD)
			symlinkMustFail(t, "open "+p, err)
			if err == nil {
				b := make([]byte, 64)
				n, _ := fid.ReadAt(b, 0)
				symlinkNoSecret(t, "read "+p, b[:n])
				fid.Close()
			}
			fid, err = fsys.Open(p, plan9.OWRITE|plan9.OTRUNC)
			symlinkMustFail(t, "open "+p+" for writing", err)
			if err == nil {
				fid.Write([]byte("pwned"))
				fid.Close()
			}
		}
		fid, err := fsys.Create("dirout/new.txt", plan9.OWRITE, 0o644)
		symlinkMustFail(t, "create dirout/new.txt", err)
		if err == nil {
			fid.Write([]byte("pwned"))
			fid.Close()
		}
		fid, err = fsys.Open("dirout", plan9.OREAD)
		symlinkMustFail(t, "open dirout as a directory", err)
		if err == nil {
			if ds, err := fid.Dirreadall(); err == nil {
				t.Errorf("listed the directory outside through dirout: %d entries", len(ds))
			}
			fid.Close()
		}
		x.intact(t, "9P2000 ops through dirout")

		// A file renamed onto a link's name replaces the link, not the
		// sentinel, and reads back as itself.
		for _, name := range names {
			tmp := name + "-src"
			fid, err := fsys.Create(tmp, plan9.OWRITE, 0o644)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := fid.Write([]byte("mine")); err != nil {
				t.Fatal(err)
			}
			fid.Close()
			var d plan9.Dir
			d.Null()
			d.Name = name
			err = fsys.Wstat(tmp, &d)
			t.Logf("rename %s onto %s: %v", tmp, name, err)
			if err == nil {
				if x.isLink(name) {
					t.Errorf("rename onto %s succeeded but the link is still there", name)
				}
				fid, err := fsys.Open(name, plan9.OREAD)
				if err != nil {
					t.Fatalf("open %s after the rename: %v", name, err)
				}
				b := make([]byte, 64)
				n, _ := fid.ReadAt(b, 0)
				fid.Close()
				if string(b[:n]) != "mine" {
					t.Errorf("%s after the rename holds %q, want %q", name, b[:n], "mine")
				}
				if err := fsys.Remove(name); err != nil {
					t.Errorf("remove %s: %v", name, err)
				}
			} else if err := fsys.Remove(tmp); err != nil {
				t.Errorf("remove %s: %v", tmp, err)
			}
			x.intact(t, "9P2000 rename onto "+name)
		}
	})

	t.Run("9P2000.L", func(t *testing.T) {
		x.plant(t)
		_, root := dialL(t, addr, 64<<10)
		for _, name := range names {
			_, f, err := root.Walk([]string{name})
			symlinkMustFail(t, "walk "+name, err)
			if err == nil {
				if _, _, err := f.Open(p9.ReadWrite); err == nil {
					b := make([]byte, 64)
					n, _ := f.ReadAt(b, 0)
					symlinkNoSecret(t, "read "+name, b[:n])
					f.WriteAt([]byte("pwned"), 0)
				}
				f.Close()
			}
			_, f, _, _, err = root.WalkGetAttr([]string{name})
			symlinkMustFail(t, "walkgetattr "+name, err)
			if err == nil {
				f.Close()
			}

			for _, flags := range []p9.OpenFlags{
				p9.WriteOnly | p9.OpenFlags(lOTRUNC),
				p9.ReadWrite,
				p9.ReadOnly,
				p9.ReadWrite | p9.OpenFlags(lOEXCL),
			} {
				d := walkTo(t, root)
				nf, _, _, err := d.Create(name, flags, 0o644, p9.NoUID, p9.NoGID)
				symlinkMustFail(t, "create "+name+" flags "+flags.String(), err)
				if err == nil {
					b := make([]byte, 64)
					n, _ := nf.ReadAt(b, 0)
					symlinkNoSecret(t, "read "+name, b[:n])
					nf.WriteAt([]byte("pwned"), 0)
					nf.Close()
				}
				d.Close()
			}
			_, err = root.Mkdir(name, 0o755, p9.NoUID, p9.NoGID)
			symlinkMustFail(t, "mkdir "+name, err)
			_, err = root.Symlink(x.links[name], name+"-new", p9.NoUID, p9.NoGID)
			symlinkMustFail(t, "symlink "+name+"-new", err)
			if _, err := os.Lstat(filepath.Join(x.storeDir, name+"-new")); err == nil {
				t.Errorf("a failed symlink left %s-new in the store", name)
			}
			if !x.isLink(name) {
				t.Errorf("after the creates, %s is no longer the planted link", name)
			}
			x.intact(t, "9P2000.L ops on "+name)
		}

		for _, p := range [][]string{{"dirout", "sentinel.txt"}, {"dirout", "store", "plain"}, {"dirout"}} {
			_, f, err := root.Walk(p)
			symlinkMustFail(t, "walk "+filepath.Join(p...), err)
			if err == nil {
				f.Close()
			}
		}
		x.intact(t, "9P2000.L walks through dirout")

		// Rename a file onto each link: the link is replaced, never
		// followed.
		for _, name := range names {
			tmp := name + "-src"
			d := walkTo(t, root)
			nf, _, _, err := d.Create(tmp, p9.WriteOnly, 0o644, p9.NoUID, p9.NoGID)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := nf.WriteAt([]byte("mine"), 0); err != nil {
				t.Fatal(err)
			}
			nf.Close()
			d.Close()
			err = root.RenameAt(tmp, root, name)
			t.Logf("renameat %s onto %s: %v", tmp, name, err)
			if err == nil {
				if x.isLink(name) {
					t.Errorf("rename onto %s succeeded but the link is still there", name)
				}
				f := walkTo(t, root, name)
				if _, _, err := f.Open(p9.ReadOnly); err != nil {
					t.Fatalf("open %s after the rename: %v", name, err)
				}
				if got := readAll(t, f); string(got) != "mine" {
					t.Errorf("%s after the rename holds %q, want %q", name, got, "mine")
				}
				f.Close()
			} else if err := root.UnlinkAt(tmp, 0); err != nil {
				t.Errorf("unlink %s: %v", tmp, err)
			}
			x.intact(t, "9P2000.L rename onto "+name)
		}

		// Rename each link away, then unlink it: either fails, or acts on
		// the link itself, which stays unusable under its new name.
		x.plant(t)
		for _, name := range names {
			moved := name + "-moved"
			err := root.RenameAt(name, root, moved)
			t.Logf("renameat %s to %s: %v", name, moved, err)
			cur := name
			if err == nil {
				cur = moved
				if !x.isLink(moved) {
					t.Errorf("%s renamed to %s is not the link any more", name, moved)
				}
			}
			_, f, err := root.Walk([]string{cur})
			symlinkMustFail(t, "walk "+cur, err)
			if err == nil {
				f.Close()
			}
			for _, flags := range []uint32{0, lATREMOVEDIR} {
				if !x.isLink(cur) {
					break
				}
				err := root.UnlinkAt(cur, flags)
				t.Logf("unlinkat %s flags %#x: %v", cur, flags, err)
			}
			x.intact(t, "9P2000.L rename and unlink of "+name)
		}
	})

	// The server is still up: a fresh client of each dialect lists the
	// store, and the links, wherever they are, are not in the listing.
	x.intact(t, "all")
	_, fsys := plan9Mount(t, addr, "glenda")
	fid, err := fsys.Open("/", plan9.OREAD)
	if err != nil {
		t.Fatal(err)
	}
	ds, err := fid.Dirreadall()
	fid.Close()
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, d := range ds {
		listed = append(listed, d.Name)
	}
	t.Logf("9P2000 listing at the end: %q", listed)
	if !slices.Contains(listed, "plain") {
		t.Errorf("9P2000 listing %q lacks plain", listed)
	}
	_, root := dialL(t, addr, 64<<10)
	lnames := list(t, root)
	t.Logf("9P2000.L listing at the end: %q", lnames)
	if !slices.Equal(lnames, listed) {
		t.Errorf("9P2000.L listing %q, 9P2000 listing %q", lnames, listed)
	}
	for _, n := range listed {
		if x.isLink(n) {
			t.Errorf("the listing shows the symbolic link %s", n)
		}
	}
	x.intact(t, "the final listings")
}

// symlinkMode names a 9P2000 open mode for messages.
func symlinkMode(mode uint8) string {
	s := [...]string{"OREAD", "OWRITE", "ORDWR", "OEXEC"}[mode&3]
	if mode&plan9.OTRUNC != 0 {
		s += "|OTRUNC"
	}
	return s
}
