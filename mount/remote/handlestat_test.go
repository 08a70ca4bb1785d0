package remote

import (
	"errors"
	iofs "io/fs"
	"testing"

	"strata/fs"
)

// TestHandleStat: a Handle describes the file it has open (a getattr of
// its fid), after the name is removed or taken by another file, where
// the node, a path, finds the new file or nothing.
func TestHandleStat(t *testing.T) {
	tr := dial(t, serve(t, openStore(t)), Options{})
	root := tr.Root()
	put(t, root, "f", []byte("seven b"))
	n, err := root.Lookup(ctx, "f")
	if err != nil {
		t.Fatal(err)
	}
	f := n.(fs.File)
	before, err := f.Stat(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h, err := f.Open(ctx, fs.ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	hs, ok := h.(fs.HandleStater)
	if !ok {
		t.Fatalf("%T is not an fs.HandleStater", h)
	}
	same := func(got fs.Info, what string) {
		t.Helper()
		if got.Name != "f" || got.Size != before.Size || got.ID != before.ID || got.Mode != before.Mode ||
			!got.ModTime.Equal(before.ModTime) || got.Stream {
			t.Errorf("handle stat %s: %+v, want %+v", what, got, before)
		}
	}
	info, err := hs.Stat(ctx)
	if err != nil {
		t.Fatal(err)
	}
	same(info, "while the name is there")

	if err := root.Remove(ctx, "f"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Stat(ctx); !errors.Is(err, iofs.ErrNotExist) {
		t.Errorf("the node after the remove: %v", err)
	}
	info, err = hs.Stat(ctx)
	if err != nil {
		t.Fatalf("handle stat after the remove: %v", err)
	}
	same(info, "after the remove")

	// A file of the same name: the node finds it, the handle keeps its own.
	put(t, root, "f", []byte("a longer file"))
	if info, err := f.Stat(ctx); err != nil || info.Size != 13 {
		t.Errorf("the node after a new file took the name: %+v, %v", info, err)
	}
	info, err = hs.Stat(ctx)
	if err != nil {
		t.Fatal(err)
	}
	same(info, "after a new file took the name")
	buf := make([]byte, 16)
	if k, _ := h.ReadAt(ctx, buf, 0); string(buf[:k]) != "seven b" {
		t.Errorf("read through the handle: %q", buf[:k])
	}

	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = hs.Stat(ctx)
	if fs.KindOf(err) != fs.BadHandle {
		t.Errorf("handle stat after close: %v, want BadHandle", err)
	}
}
