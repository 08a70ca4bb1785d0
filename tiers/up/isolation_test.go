package up

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/hugelgupf/p9/p9"

	"strata/tiers/keyring"
)

// dialRaw opens a 9P2000.L session with hugelgupf/p9's client as client c
// over its encrypted link: walks and renames go on the wire as given, with
// no check on this side.
func dialRaw(t *testing.T, h *Hierarchy, c string) p9.File {
	t.Helper()
	conn, err := h.Keys.Dial(c, keyring.Client(c))(context.Background(), "tcp", h.Groups[0].Edge.Addr())
	if err != nil {
		t.Fatal(err)
	}
	cl, err := p9.NewClient(conn, p9.WithMessageSize(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	root, err := cl.Attach("")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// clone is a new fid for d: Tlcreate turns the fid it is sent on into the
// new file's.
func clone(t *testing.T, d p9.File) p9.File {
	t.Helper()
	_, c, err := d.Walk(nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestClientIsolation: a client cannot reach another client's /store by
// any path, rename or link: walks with "..", "/" and the other's name,
// a rename of its own file to the other's, a symbolic link it makes or
// one planted in its store on disk, and a hard link.
func TestClientIsolation(t *testing.T) {
	dir := t.TempDir()
	h := start(t, Config{Dir: dir})
	g := h.Groups[0]
	victim, thief := g.Clients[0], g.Clients[1]

	v := dialRaw(t, h, victim)
	_, store, err := v.Walk([]string{"store"})
	if err != nil {
		t.Fatal(err)
	}
	f, _, _, err := clone(t, store).Create("secret", p9.WriteOnly, 0o600, p9.NoUID, p9.NoGID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("the victim's"), 0); err != nil {
		t.Fatal(err)
	}
	f.Close()

	x := dialRaw(t, h, thief)
	for _, path := range [][]string{
		{"..", victim, "secret"},
		{"store", "..", "..", victim, "secret"},
		{"store", "..", "store", "..", "..", "..", victim, "secret"},
		{"store", victim + "/secret"},
		{"store", "../" + victim + "/secret"},
		{"/" + victim, "secret"},
		{victim, "secret"},
	} {
		if _, got, err := x.Walk(path); err == nil {
			got.Close()
			t.Errorf("the thief walked %q", path)
		}
	}

	_, xs, err := x.Walk([]string{"store"})
	if err != nil {
		t.Fatal(err)
	}
	mine, _, _, err := clone(t, xs).Create("mine", p9.WriteOnly, 0o644, p9.NoUID, p9.NoGID)
	if err != nil {
		t.Fatal(err)
	}
	mine.Close()
	_, mineF, err := xs.Walk([]string{"mine"})
	if err != nil {
		t.Fatal(err)
	}
	for _, to := range []string{"../" + victim + "/secret", "/" + victim + "/secret", "..", "../../x"} {
		if err := xs.RenameAt("mine", xs, to); err == nil {
			t.Errorf("the thief renamed its file to %q", to)
		}
		if err := mineF.Rename(xs, to); err == nil {
			t.Errorf("the thief renamed its file (Trename) to %q", to)
		}
	}
	if _, err := xs.Symlink("../"+victim+"/secret", "link", p9.NoUID, p9.NoGID); err == nil {
		t.Error("the thief made a symbolic link")
	}
	if err := xs.Link(mineF, "hard"); err == nil {
		t.Error("the thief made a hard link")
	}

	// A link planted in the thief's store on disk, pointing at the
	// victim's file: the store does not follow it.
	thiefDir := filepath.Join(dir, "g1", "edge", "store", thief)
	if err := os.Symlink(filepath.Join("..", victim, "secret"), filepath.Join(thiefDir, "planted")); err != nil {
		t.Fatal(err)
	}
	if _, pf, err := xs.Walk([]string{"planted"}); err == nil {
		if _, _, err := pf.Open(p9.ReadOnly); err == nil {
			buf := make([]byte, 64)
			n, _ := pf.ReadAt(buf, 0)
			t.Errorf("the thief opened the planted link and read %q", buf[:n])
		}
		pf.Close()
	}

	// The victim's file is as it was.
	_, vf, err := store.Walk([]string{"secret"})
	if err != nil {
		t.Fatalf("the victim's file: %v", err)
	}
	if _, _, err := vf.Open(p9.ReadOnly); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, _ := vf.ReadAt(buf, 0)
	if string(buf[:n]) != "the victim's" {
		t.Errorf("the victim's file holds %q", buf[:n])
	}
}
