package objstore

import (
	iofs "io/fs"
	"slices"
	"strings"
	"testing"

	"strata/fs"
)

// TestHostileNames: bad names fail as Invalid (or NameTooLong) in every
// call that takes one, no path leaves the prefix, and nothing is ever
// created outside it.
func TestHostileNames(t *testing.T) {
	bucket := newBucket(t)
	// Objects beside the store's prefix, and one inside it, put by others.
	putRaw(t, bucket, "outside/secret", []byte("secret"))
	putRaw(t, bucket, "hsibling/x", []byte("sibling"))
	putRaw(t, bucket, "hfile", []byte("a key that begins like the prefix"))
	putRaw(t, bucket, "h/ok", []byte("ok"))
	before := keys(t, bucket)

	s := openStore(t, config(t, bucket, "h"))
	root := s.Root()
	d, err := root.Mkdir(ctx, "d", 0o755)
	if err != nil {
		t.Fatal(err)
	}
	put(t, d, "f", []byte("f"))

	long := strings.Repeat("n", fs.MaxNameLen+1)
	bad := []string{"", ".", "..", "/", "a/b", "../outside", "..\x00", "x\x00y", "/etc", "d/../../outside", long}
	for _, name := range bad {
		want := fs.Invalid
		if name == long {
			want = fs.NameTooLong
		}
		for _, dir := range []fs.Dir{root, d} {
			_, err := dir.Lookup(ctx, name)
			wantKind(t, "lookup "+quote(name), err, want)
			_, _, err = dir.Create(ctx, name, fs.ReadWrite, 0o644)
			wantKind(t, "create "+quote(name), err, want)
			_, _, err = dir.Create(ctx, name, fs.ReadWrite|fs.Excl, 0o644)
			wantKind(t, "create exclusive "+quote(name), err, want)
			_, err = dir.Mkdir(ctx, name, 0o755)
			wantKind(t, "mkdir "+quote(name), err, want)
			wantKind(t, "remove "+quote(name), dir.Remove(ctx, name), want)
			wantKind(t, "rename from "+quote(name), dir.Rename(ctx, name, root, "x"), want)
			wantKind(t, "rename to "+quote(name), d.Rename(ctx, "f", dir, name), want)
		}
	}
	for _, p := range []string{"..", "../outside/secret", "d/../../outside", "d/../..", "d/f/..", "./..", "d/\x00"} {
		if n, err := fs.Walk(ctx, root, p); err == nil {
			t.Errorf("walk %q: found %T", p, n)
		}
	}
	// The root is the prefix: nothing beside it shows.
	list, err := root.ReadDir(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := names(list); !slices.Equal(got, []string{"d", "ok"}) {
		t.Errorf("root lists %q, want d and ok", got)
	}
	if _, err := root.Lookup(ctx, "outside"); !isKind(err, fs.NotExist) {
		t.Errorf("lookup outside: %v", err)
	}
	expect(t, root, "d/f", "f")
	expect(t, root, "ok", "ok")

	// Odd but valid names go through as they are.
	odd := []string{"sp ace", "per%cent", "q?mark", "h#sh", "plus+", "ünïcode", "tab\tx", "back\\slash", "...", ".hidden", "-dash", "amp&er", "quote\"'", "<lt>", strings.Repeat("z", 200)}
	for _, name := range odd {
		put(t, d, name, []byte("odd "+name))
	}
	list, err = d.ReadDir(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := append([]string{"f"}, odd...)
	slices.Sort(want)
	if got := names(list); !slices.Equal(got, want) {
		t.Errorf("odd names listed as %q, want %q", got, want)
	}
	for _, name := range odd {
		expect(t, d, name, "odd "+name)
		if err := d.Rename(ctx, name, root, name); err != nil {
			t.Errorf("rename %q: %v", name, err)
		}
		if err := root.Remove(ctx, name); err != nil {
			t.Errorf("remove %q: %v", name, err)
		}
	}

	// Everything the store made is under its prefix; what was beside it
	// is untouched.
	after := keys(t, bucket)
	for _, k := range after {
		if !strings.HasPrefix(k, "h/") && !slices.Contains(before, k) {
			t.Errorf("object %q made outside the prefix", k)
		}
	}
	for _, k := range before {
		if !slices.Contains(after, k) {
			t.Errorf("object %q beside the store is gone", k)
		}
	}
	if got, want := strings.Join(after, ","), "h/d/,h/d/f,h/ok,hfile,hsibling/x,outside/secret"; got != want {
		t.Errorf("objects: %s, want %s", got, want)
	}
}

// TestForeignKeys: objects put by other clients, without directory
// markers, make directories that listings, lookups and removes handle.
func TestForeignKeys(t *testing.T) {
	bucket := newBucket(t)
	putRaw(t, bucket, "p/good", []byte("good"))
	putRaw(t, bucket, "p/dir/inner", []byte("inner"))
	putRaw(t, bucket, "p/dir/deeper/leaf", []byte("leaf"))
	s := openStore(t, config(t, bucket, "p"))
	list, err := s.Root().ReadDir(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := names(list); !slices.Equal(got, []string{"dir", "good"}) {
		t.Errorf("root lists %q", got)
	}
	for _, e := range list {
		if e.Name == "dir" && !e.IsDir() || e.Name == "good" && (e.IsDir() || e.Size != 4) {
			t.Errorf("entry %+v", e)
		}
	}
	expect(t, s.Root(), "dir/inner", "inner")
	n, err := fs.Walk(ctx, s.Root(), "dir/deeper")
	if err != nil {
		t.Fatal(err)
	}
	if info, err := n.Stat(ctx); err != nil || !info.IsDir() || info.Mode.Perm() != 0o755 {
		t.Errorf("stat of a directory without a marker: %+v, %v", info, err)
	}
	d := n.(fs.Dir)
	wantKind(t, "remove a directory without a marker, not empty", s.Root().Remove(ctx, "dir"), fs.NotEmpty)
	if err := d.Remove(ctx, "leaf"); err != nil {
		t.Fatal(err)
	}
	// With its last object gone, a directory without a marker is gone.
	if _, err := d.ReadDir(ctx); !isKind(err, fs.NotExist) {
		t.Errorf("readdir of an emptied directory without a marker: %v", err)
	}
	mode := iofs.FileMode(0o700)
	dd, _ := fs.Walk(ctx, s.Root(), "dir")
	if err := dd.SetAttr(ctx, fs.Attr{Mode: &mode}); err != nil {
		t.Fatal(err)
	}
	if info, err := dd.Stat(ctx); err != nil || info.Mode.Perm() != 0o700 {
		t.Errorf("chmod a directory without a marker: %+v, %v", info, err)
	}
}

func quote(s string) string { return strings.ReplaceAll(strings.ToValidUTF8(s, "?"), "\x00", `\0`) }

func names(list []fs.Info) []string {
	var out []string
	for _, e := range list {
		out = append(out, e.Name)
	}
	return out
}
