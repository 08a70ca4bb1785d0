package union

import (
	"bytes"
	"context"
	"errors"
	"io"
	iofs "io/fs"
	"log/slog"
	"strings"
	"testing"

	"strata/fs"
	"strata/fs/fstest"
	"strata/fs/memfs"
)

var ctx = context.Background()

func put(t testing.TB, d fs.Dir, name, data string) {
	t.Helper()
	_, h, err := d.Create(ctx, name, fs.WriteOnly|fs.Truncate, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.WriteAt(ctx, []byte(data), 0); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

func read(t testing.TB, d fs.Dir, name string) string {
	t.Helper()
	n, err := d.Lookup(ctx, name)
	if err != nil {
		t.Fatalf("lookup %s: %v", name, err)
	}
	h, err := n.(fs.File).Open(ctx, fs.ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close(ctx)
	buf := make([]byte, 100)
	k, err := h.ReadAt(ctx, buf, 0)
	if err != nil && err != io.EOF {
		t.Fatal(err)
	}
	return string(buf[:k])
}

func wantKind(t testing.TB, what string, err error, k fs.Kind) {
	t.Helper()
	var fe *fs.Error
	if !errors.As(err, &fe) || fe.Kind != k {
		t.Errorf("%s: got %v, want an fs.Error of kind %q", what, err, k)
	}
}

func names(list []fs.Info) string {
	var s []string
	for _, e := range list {
		s = append(s, e.Name)
	}
	return strings.Join(s, ",")
}

// local and parent are two trees such as a tier joins: both have "a" and
// the directory "d", each has names of its own.
func trees(t testing.TB) (local, parent fs.Dir) {
	local, parent = memfs.New(), memfs.New()
	put(t, local, "a", "local a")
	put(t, local, "l", "only local")
	put(t, parent, "a", "parent a")
	put(t, parent, "p", "only parent")
	for _, m := range []fs.Dir{local, parent} {
		d, err := m.Mkdir(ctx, "d", 0o755)
		if err != nil {
			t.Fatal(err)
		}
		put(t, d, "x", "x")
	}
	dp, _ := parent.Lookup(ctx, "d")
	put(t, dp.(fs.Dir), "only-in-parent-d", "y")
	return local, parent
}

// TestPrecedence: the first member that has a name wins; a name in the
// parent only falls through to it; a name in none is NotExist.
func TestPrecedence(t *testing.T) {
	local, parent := trees(t)
	u := New("apps", local, parent)
	if got := read(t, u, "a"); got != "local a" {
		t.Errorf("a: %q, want the first member's", got)
	}
	if got := read(t, u, "p"); got != "only parent" {
		t.Errorf("p: %q", got)
	}
	if got := read(t, u, "l"); got != "only local" {
		t.Errorf("l: %q", got)
	}
	// Reversed, the parent wins.
	if got := read(t, New("apps", parent, local), "a"); got != "parent a" {
		t.Errorf("a with the parent first: %q", got)
	}
	_, err := u.Lookup(ctx, "none")
	wantKind(t, "lookup none", err, fs.NotExist)
	if !errors.Is(err, iofs.ErrNotExist) {
		t.Errorf("lookup none: %v is not fs.ErrNotExist", err)
	}
	_, err = u.Lookup(ctx, "a/b")
	wantKind(t, "lookup a/b", err, fs.Invalid)

	// A directory in both is the first member's, not a merge.
	n, err := u.Lookup(ctx, "d")
	if err != nil {
		t.Fatal(err)
	}
	list, err := n.(fs.Dir).ReadDir(ctx)
	if err != nil || names(list) != "x" {
		t.Errorf("d lists %q, %v; want the first member's x only", names(list), err)
	}
}

// TestListing: each name once, sorted, with the first member's entry.
func TestListing(t *testing.T) {
	local, parent := trees(t)
	list, err := New("apps", local, parent).ReadDir(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := names(list); got != "a,d,l,p" {
		t.Errorf("listing %s, want a,d,l,p", got)
	}
	for _, e := range list {
		if e.Name == "a" && e.Size != int64(len("local a")) {
			t.Errorf("a listed with size %d: not the first member's entry", e.Size)
		}
	}
	ids := map[uint64]string{}
	for _, e := range list {
		if prev, ok := ids[e.ID]; ok {
			t.Errorf("%s and %s share the ID %d", prev, e.Name, e.ID)
		}
		ids[e.ID] = e.Name
	}
	info, err := New("apps", local, parent).Stat(ctx)
	if err != nil || info.Name != "apps" || !info.IsDir() || info.Mode.Perm() != 0o755 {
		t.Errorf("stat: %+v, %v", info, err)
	}
}

// failing is a member that cannot be reached.
type failing struct {
	fs.DirDefaults
	kind fs.Kind
}

func (f failing) err(op string) error {
	return &fs.Error{Op: op, Kind: f.kind, Err: errors.New("parent tier unreachable")}
}
func (f failing) Stat(context.Context) (fs.Info, error) { return fs.Info{}, f.err("stat") }
func (f failing) Lookup(context.Context, string) (fs.Node, error) {
	return nil, f.err("lookup")
}
func (f failing) ReadDir(context.Context) ([]fs.Info, error) { return nil, f.err("readdir") }

// missing is a member whose directory does not exist.
type missing struct{ fs.DirDefaults }

func (missing) Stat(context.Context) (fs.Info, error) {
	return fs.Info{}, &fs.Error{Op: "stat", Kind: fs.NotExist}
}
func (missing) Lookup(_ context.Context, name string) (fs.Node, error) {
	return nil, &fs.Error{Op: "lookup", Path: name, Kind: fs.NotExist}
}
func (missing) ReadDir(context.Context) ([]fs.Info, error) {
	return nil, &fs.Error{Op: "readdir", Kind: fs.NotExist}
}

// TestFailingMember: an unreachable member does not hide what the others
// have, and "not there" stays apart from "could not ask".
func TestFailingMember(t *testing.T) {
	local, parent := trees(t)
	down := failing{kind: fs.Unavailable}
	var logged bytes.Buffer
	u := NewWithOptions("apps", Options{Log: slog.New(slog.NewTextHandler(&logged, nil))}, local, down)

	if got := read(t, u, "a"); got != "local a" {
		t.Errorf("a: %q", got)
	}
	_, err := u.Lookup(ctx, "p")
	wantKind(t, "lookup of a name only the unreachable parent could have", err, fs.Unavailable)

	list, err := u.ReadDir(ctx)
	if err != nil || names(list) != "a,d,l" {
		t.Errorf("listing with the parent down: %q, %v; want the local a,d,l", names(list), err)
	}
	if !strings.Contains(logged.String(), "parent tier unreachable") {
		t.Errorf("the skipped member was not logged: %q", logged.String())
	}
	if info, err := u.Stat(ctx); err != nil || !info.IsDir() {
		t.Errorf("stat: %+v, %v", info, err)
	}

	// A failure before a member that has the name does not hide it.
	u = New("apps", down, parent)
	if got := read(t, u, "p"); got != "only parent" {
		t.Errorf("p past a failing member: %q", got)
	}
	_, err = u.Lookup(ctx, "none")
	wantKind(t, "lookup none past a failing member", err, fs.Unavailable)

	// Only when every member fails is the listing an error.
	_, err = New("apps", down, failing{kind: fs.Timeout}).ReadDir(ctx)
	wantKind(t, "listing with every member down", err, fs.Unavailable)

	// A member without the directory adds nothing and is no failure.
	list, err = New("apps", missing{}, parent).ReadDir(ctx)
	if err != nil || names(list) != "a,d,p" {
		t.Errorf("listing with a missing member: %q, %v", names(list), err)
	}
	list, err = New("apps", missing{}, down).ReadDir(ctx)
	if err != nil || len(list) != 0 {
		t.Errorf("listing a missing and a failing member: %q, %v; want empty", names(list), err)
	}
	_, err = New("apps", missing{}, missing{}).Lookup(ctx, "a")
	wantKind(t, "lookup in missing members", err, fs.NotExist)
}

// TestMutations: changes go to the first member only.
func TestMutations(t *testing.T) {
	local, parent := trees(t)
	u := New("apps", local, parent)

	put(t, u, "new", "new")
	if _, err := local.Lookup(ctx, "new"); err != nil {
		t.Errorf("created file not in the first member: %v", err)
	}
	if _, err := parent.Lookup(ctx, "new"); err == nil {
		t.Error("created file in the parent")
	}
	if _, err := u.Mkdir(ctx, "nd", 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := local.Lookup(ctx, "nd"); err != nil {
		t.Errorf("new directory not in the first member: %v", err)
	}
	if err := u.Rename(ctx, "new", u, "renamed"); err != nil {
		t.Errorf("rename within the union: %v", err)
	}
	if got := read(t, local, "renamed"); got != "new" {
		t.Errorf("renamed: %q", got)
	}
	if err := u.Remove(ctx, "renamed"); err != nil {
		t.Error(err)
	}

	// A name the parent alone holds is not removed through the union...
	wantKind(t, "remove p", u.Remove(ctx, "p"), fs.NotExist)
	if got := read(t, parent, "p"); got != "only parent" {
		t.Errorf("parent's p: %q", got)
	}
	// ...and creating it makes a local entry that hides the parent's.
	put(t, u, "p", "local p")
	if got := read(t, u, "p"); got != "local p" {
		t.Errorf("p after a local create: %q", got)
	}

	empty := New("empty")
	if list, err := empty.ReadDir(ctx); err != nil || len(list) != 0 {
		t.Errorf("empty union lists %v, %v", list, err)
	}
	_, _, err := empty.Create(ctx, "f", fs.WriteOnly, 0o644)
	wantKind(t, "create in an empty union", err, fs.Permission)
	_, err = empty.Lookup(ctx, "f")
	wantKind(t, "lookup in an empty union", err, fs.NotExist)
}

// TestIDs: the members number their nodes on their own; through the
// union no two nodes share an ID, and a listing agrees with Stat.
func TestIDs(t *testing.T) {
	local, parent := trees(t)
	u := New("apps", local, parent)
	list, err := u.ReadDir(ctx)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[uint64]string{}
	for _, e := range list {
		n, err := u.Lookup(ctx, e.Name)
		if err != nil {
			t.Fatal(err)
		}
		info, err := n.Stat(ctx)
		if err != nil || info.ID != e.ID || info.ID == 0 {
			t.Errorf("%s: listed with ID %d, stats %+v, %v", e.Name, e.ID, info, err)
		}
		if prev, ok := seen[info.ID]; ok {
			t.Errorf("%s and %s share the ID %d", prev, e.Name, info.ID)
		}
		seen[info.ID] = e.Name
	}
	pi, _ := parent.Lookup(ctx, "p")
	raw, _ := pi.Stat(ctx)
	if n, _ := u.Lookup(ctx, "p"); n != nil {
		if info, _ := n.Stat(ctx); info.ID == raw.ID {
			t.Errorf("the parent's p keeps its own ID %d through the union", raw.ID)
		}
	}
}

// TestConformance: a union whose first member is a writable memfs keeps
// the promises of a tree, names from both members included; so does one
// whose first member is read-only.
func TestConformance(t *testing.T) {
	local, parent := trees(t)
	if err := fstest.Check(ctx, New("apps", local, parent), "a", "p", "l", "d/x"); err != nil {
		t.Error(err)
	}
	local, parent = trees(t)
	if err := fstest.Check(ctx, New("apps", readOnly{parent}, local), "a", "p", "l", "d/only-in-parent-d"); err != nil {
		t.Error(err)
	}
}

// readOnly refuses every change to its directory.
type readOnly struct{ fs.Dir }

func (readOnly) Mkdir(_ context.Context, name string, _ iofs.FileMode) (fs.Dir, error) {
	return nil, &fs.Error{Op: "mkdir", Path: name, Kind: fs.Permission}
}
