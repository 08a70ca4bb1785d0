package store

import (
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	iofs "io/fs"

	"strata/fs"
)

// sentinel is a file outside the store that nothing may read or change.
type sentinel struct {
	dir, path string
	mtime     time.Time
}

const secret = "outside the store"

func newSentinel(t *testing.T) *sentinel {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "outside")
	os.Mkdir(dir, 0o755)
	s := &sentinel{dir: dir, path: filepath.Join(dir, "sentinel"), mtime: time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)}
	if err := os.WriteFile(s.path, []byte(secret), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(s.path, s.mtime, s.mtime); err != nil {
		t.Fatal(err)
	}
	return s
}

// intact checks that the sentinel and its directory are as they were.
func (s *sentinel) intact(t *testing.T, after string) {
	t.Helper()
	fi, err := os.Stat(s.path)
	if err != nil {
		t.Fatalf("after %s: %v", after, err)
	}
	b, _ := os.ReadFile(s.path)
	if string(b) != secret || !fi.ModTime().Equal(s.mtime) || fi.Mode().Perm() != 0o644 {
		t.Errorf("after %s: the sentinel holds %q, mtime %v, mode %v", after, b, fi.ModTime(), fi.Mode())
	}
	list, _ := os.ReadDir(s.dir)
	if len(list) != 1 {
		t.Errorf("after %s: the directory outside holds %d entries", after, len(list))
	}
}

// noSecret checks that nothing read through the store holds the secret.
func noSecret(t *testing.T, what string, b []byte) {
	t.Helper()
	if len(b) > 0 && slices.Equal(b, []byte(secret)) {
		t.Errorf("%s: read the file outside the store", what)
	}
}

func TestSymlinkOut(t *testing.T) {
	out := newSentinel(t)
	s, dir := open(t)
	root := s.Root()
	rel, err := filepath.Rel(dir, out.path)
	if err != nil {
		t.Fatal(err)
	}
	links := map[string]string{"rel": rel, "abs": out.path, "dirl": out.dir}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(filepath.Join(dir, name)); name != "dirl" && (err != nil || string(b) != secret) {
			t.Fatalf("the link %s does not reach the sentinel: %v", name, err)
		}
	}

	list, err := root.ReadDir(ctx)
	if err != nil || len(list) != 0 {
		t.Errorf("readdir lists %v, %v", list, err)
	}
	for name := range links {
		_, err := root.Lookup(ctx, name)
		wantErr(t, err, fs.Permission, name)
		if _, err := fs.Walk(ctx, root, name+"/sentinel"); err == nil {
			t.Errorf("walk through %s: succeeded", name)
		}
		for _, flag := range []fs.Flag{fs.ReadWrite, fs.ReadWrite | fs.Truncate, fs.WriteOnly | fs.Append, fs.ReadOnly} {
			_, h, err := root.Create(ctx, name, flag, 0o644)
			if err == nil {
				noSecret(t, "create "+name, readAll(t, h))
				write(t, h, []byte("x"), 0)
				h.Close(ctx)
				t.Errorf("create %s with %#o: succeeded", name, flag)
			}
			out.intact(t, "create "+name)
		}
		_, _, err = root.Create(ctx, name, fs.ReadWrite|fs.Excl, 0o644)
		wantErr(t, err, fs.Exist, name)
		_, err = root.Mkdir(ctx, name, 0o755)
		wantErr(t, err, fs.Exist, name)
	}
	out.intact(t, "lookups and creates")

	// Through a directory link, nothing is created outside.
	if d, err := root.Mkdir(ctx, "d", 0o755); err == nil {
		os.Remove(filepath.Join(dir, "d"))
		os.Symlink(out.dir, filepath.Join(dir, "d"))
		_, _, err := d.Create(ctx, "evil", fs.ReadWrite, 0o644)
		wantErr(t, err, fs.Permission, "d/evil")
		_, err = d.Mkdir(ctx, "evil", 0o755)
		wantErr(t, err, fs.Permission, "d/evil")
		if _, err := d.ReadDir(ctx); err == nil {
			t.Errorf("readdir through a link out: succeeded")
		}
		if _, err := d.Lookup(ctx, "sentinel"); err == nil {
			t.Errorf("lookup through a link out: succeeded")
		}
		wantErr(t, d.Remove(ctx, "sentinel"), fs.Permission, "d/sentinel")
		wantErr(t, d.Rename(ctx, "sentinel", root, "stolen"), fs.Permission, "d/sentinel")
		put(t, root, "mine", []byte("mine"))
		wantErr(t, root.Rename(ctx, "mine", d, "sentinel"), fs.Permission, "mine")
		mode := iofs.FileMode(0o777)
		if err := d.SetAttr(ctx, fs.Attr{Mode: &mode}); err == nil {
			t.Errorf("chmod through a link out: succeeded")
		}
		os.Remove(filepath.Join(dir, "d"))
		os.Remove(filepath.Join(dir, "mine"))
	}
	out.intact(t, "a directory swapped for a link")

	// A file node whose name became a link afterwards.
	f := put(t, root, "f", []byte("inside"))
	os.Remove(filepath.Join(dir, "f"))
	os.Symlink(out.path, filepath.Join(dir, "f"))
	for _, flag := range []fs.Flag{fs.ReadOnly, fs.ReadWrite, fs.WriteOnly | fs.Truncate, fs.WriteOnly | fs.Append} {
		h, err := f.Open(ctx, flag)
		if err == nil {
			noSecret(t, "open", readAll(t, h))
			write(t, h, []byte("x"), 0)
			h.Close(ctx)
			t.Errorf("open the swapped file with %#o: succeeded", flag)
		}
	}
	zero := int64(0)
	mode := iofs.FileMode(0o777)
	mtime := time.Now()
	for _, a := range []fs.Attr{{Size: &zero}, {Mode: &mode}, {ModTime: &mtime}} {
		wantErr(t, f.SetAttr(ctx, a), fs.Permission, "f")
	}
	if info, err := f.Stat(ctx); err == nil && info.Size == int64(len(secret)) {
		t.Errorf("stat follows the link: %+v", info)
	}
	out.intact(t, "opening and changing a swapped file")

	// A file node whose name became a FIFO: nothing blocks.
	g := put(t, root, "g", nil)
	os.Remove(filepath.Join(dir, "g"))
	if err := syscall.Mkfifo(filepath.Join(dir, "g"), 0o666); err != nil {
		t.Fatal(err)
	}
	for _, flag := range []fs.Flag{fs.ReadOnly, fs.WriteOnly, fs.WriteOnly | fs.Truncate} {
		if _, err := g.Open(ctx, flag); err == nil {
			t.Errorf("open a FIFO with %#o: succeeded", flag)
		}
	}
	if err := g.SetAttr(ctx, fs.Attr{Size: &zero}); err == nil {
		t.Errorf("truncate a FIFO: succeeded")
	}
	if err := g.SetAttr(ctx, fs.Attr{ModTime: &mtime}); err != nil {
		t.Errorf("touch a FIFO: %v", err)
	}
	os.Remove(filepath.Join(dir, "g"))

	// Renames from and onto links move or replace the link only.
	if err := root.Rename(ctx, "abs", root, "abs2"); err != nil {
		t.Errorf("rename a link: %v", err)
	}
	put(t, root, "plain", []byte("plain"))
	if err := root.Rename(ctx, "plain", root, "abs2"); err != nil {
		t.Errorf("rename onto a link: %v", err)
	}
	expect(t, root, "abs2", "plain")
	out.intact(t, "renames")

	// Remove removes the links themselves.
	for _, name := range []string{"rel", "dirl", "f"} {
		if err := root.Remove(ctx, name); err != nil {
			t.Errorf("remove %s: %v", name, err)
		}
	}
	out.intact(t, "removes")
	if list, _ := os.ReadDir(dir); len(list) != 1 {
		t.Errorf("the store holds %d entries, want abs2 only", len(list))
	}
}

// TestEscapeErrorText guards the text by which the store recognizes the
// os.Root errors it classifies.
func TestEscapeErrorText(t *testing.T) {
	dir := t.TempDir()
	r, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	os.Symlink("/", filepath.Join(dir, "l"))
	_, err = r.Open("l")
	if got := fail("open", "l", err); fs.KindOf(got) != fs.Permission {
		t.Errorf("os.Root escape error %q classified as %v", err, fs.KindOf(got))
	}
}
