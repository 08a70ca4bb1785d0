package ninep

import (
	"context"
	"errors"
	"fmt"
	iofs "io/fs"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"9fans.net/go/plan9"
	"9fans.net/go/plan9/client"

	"strata/fs"
	"strata/fs/ninep/ninetest"
)

// A third-party client (9fans.net/go/plan9/client) does the everyday
// things: create, write, read back, list, rename, remove, mkdir. What it
// writes is in the tree; what it removes is gone from it.
func TestPlan9Client(t *testing.T) {
	root := plan9TestTree(t, map[string]string{"hello.txt": "hello, world\n", "sub/inner": "x"})
	addr := plan9Serve(t, root)
	err := ninetest.Plan9Client(addr, ninetest.Plan9Options{
		Uname:     "alice",
		ListsMode: true,
		AfterCreate: func(name string, data []byte) error {
			if got, err := plan9ReadFile(t, root, name); err != nil || got != string(data) {
				return fmt.Errorf("the tree holds %d bytes in %s (%v), want %d", len(got), name, err, len(data))
			}
			return nil
		},
		AfterRename: func(_, name string, data []byte) error {
			if got, err := plan9ReadFile(t, root, name); err != nil || got != string(data) {
				return fmt.Errorf("the renamed file %s holds %d bytes (%v), want %d", name, len(got), err, len(data))
			}
			return nil
		},
		AfterRemove: func(names []string) error {
			for _, name := range names {
				if _, err := fs.Walk(context.Background(), root, name); !errors.Is(err, iofs.ErrNotExist) {
					return fmt.Errorf("the tree still has %s: %v", name, err)
				}
			}
			return nil
		},
	})
	if err != nil {
		t.Error(err)
	}
}

// Tversion: 9P2000.u is answered as 9P2000, msize is clamped, and the
// router refuses what it must.
func TestPlan9Version(t *testing.T) {
	addr := plan9Serve(t, plan9TestTree(t, map[string]string{"f": "x"}))
	for _, tc := range []struct {
		version string
		msize   uint32
		want    string
		wantMax uint32
	}{
		{"9P2000", 8192, "9P2000", 8192},
		{"9P2000.u", 8192, "9P2000", 8192},
		{"9P2000.x", 2048, "9P2000", 2048},
		{"9P2000", 1<<32 - 1, "9P2000", MaxMsize9P},
		{"9P2000", 1 << 20, "9P2000", MaxMsize9P},
		{"9P2000", MinMsize, "9P2000", MinMsize},
	} {
		rc := plan9Dial(t, addr)
		rx := rc.rpc(&plan9.Fcall{Type: plan9.Tversion, Tag: plan9.NOTAG, Msize: tc.msize, Version: tc.version})
		if rx.Type != plan9.Rversion || rx.Version != tc.want || rx.Msize != tc.wantMax {
			t.Errorf("Tversion %q msize %d: got %v", tc.version, tc.msize, rx)
			continue
		}
		rc.ok(&plan9.Fcall{Type: plan9.Tattach, Tag: 1, Fid: 1, Afid: plan9.NOFID, Uname: "u"})
		rx = rc.ok(&plan9.Fcall{Type: plan9.Topen, Tag: 2, Fid: 1, Mode: plan9.OREAD})
		if rx.Iounit != tc.wantMax-24 {
			t.Errorf("msize %d: iounit %d, want msize-24", tc.wantMax, rx.Iounit)
		}
	}
	for _, tc := range []struct {
		name  string
		msize uint32
	}{{"msize 0", 0}, {"msize 7", 7}} {
		rc := plan9Dial(t, addr)
		rx := rc.rpc(&plan9.Fcall{Type: plan9.Tversion, Tag: plan9.NOTAG, Msize: tc.msize, Version: "9P2000"})
		if rx.Type != plan9.Rerror || !strings.Contains(rx.Ename, "below the minimum") {
			t.Errorf("%s: got %v", tc.name, rx)
		}
		if !rc.closed(5 * time.Second) {
			t.Errorf("%s: the connection stays open", tc.name)
		}
	}
	// A first message that is not a Tversion.
	rc := plan9Dial(t, addr)
	rx := rc.rpc(&plan9.Fcall{Type: plan9.Tattach, Tag: 1, Fid: 0, Afid: plan9.NOFID, Uname: "u"})
	if rx.Type != plan9.Rversion || rx.Version != "unknown" {
		t.Errorf("Tattach first: got %v, want Rversion unknown", rx)
	}
	if !rc.closed(5 * time.Second) {
		t.Error("Tattach first: the connection stays open")
	}
	// The third-party client asks for msize 131072 and gets 65535.
	c, err := client.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

// A Tversion in the middle of a session starts it again: every fid goes.
// One naming another protocol ends the connection.
func TestPlan9Reversion(t *testing.T) {
	addr := plan9Serve(t, plan9TestTree(t, map[string]string{"f": "x"}))
	rc := plan9DialAttach(t, addr)
	rc.ok(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 0, Newfid: 1, Wname: []string{"f"}})
	rc.ok(&plan9.Fcall{Type: plan9.Topen, Tag: 1, Fid: 1, Mode: plan9.OREAD})
	rx := rc.rpc(&plan9.Fcall{Type: plan9.Tversion, Tag: plan9.NOTAG, Msize: 4096, Version: "9P2000"})
	if rx.Type != plan9.Rversion || rx.Msize != 4096 || rx.Version != "9P2000" {
		t.Fatalf("second Tversion: %v", rx)
	}
	if e := rc.fail(&plan9.Fcall{Type: plan9.Tstat, Tag: 1, Fid: 0}); !strings.Contains(e, "unknown fid 0") {
		t.Errorf("fid 0 after Tversion: %s", e)
	}
	// A bigger msize than the session has is not granted.
	rx = rc.rpc(&plan9.Fcall{Type: plan9.Tversion, Tag: plan9.NOTAG, Msize: 60000, Version: "9P2000"})
	if rx.Msize != 4096 {
		t.Errorf("third Tversion: %v", rx)
	}
	rc.ok(&plan9.Fcall{Type: plan9.Tattach, Tag: 1, Fid: 0, Afid: plan9.NOFID})
	rx = rc.rpc(&plan9.Fcall{Type: plan9.Tversion, Tag: plan9.NOTAG, Msize: 4096, Version: "9P2000.L"})
	if rx.Type != plan9.Rversion || rx.Version != "unknown" {
		t.Errorf("Tversion 9P2000.L in session: %v", rx)
	}
	if !rc.closed(5 * time.Second) {
		t.Error("the connection stays open")
	}
}

func TestPlan9AuthAndAttach(t *testing.T) {
	root := plan9TestTree(t, map[string]string{"a/b/c": "deep"})
	addr := plan9Serve(t, root)
	rc := plan9DialVersion(t, addr, 8192)
	if e := rc.fail(&plan9.Fcall{Type: plan9.Tauth, Tag: 1, Afid: 5, Uname: "u"}); e != "authentication not required" {
		t.Errorf("Tauth: %q", e)
	}
	if e := rc.fail(&plan9.Fcall{Type: plan9.Tattach, Tag: 1, Fid: 0, Afid: 5, Uname: "u"}); !strings.Contains(e, "authentication not required") {
		t.Errorf("Tattach with an afid: %q", e)
	}
	if e := rc.fail(&plan9.Fcall{Type: plan9.Tattach, Tag: 1, Fid: 0, Afid: plan9.NOFID, Uname: strings.Repeat("u", 300)}); !strings.Contains(e, "user name") {
		t.Errorf("long user name: %q", e)
	}
	// No uname: "strata". An aname attaches below the root, and ".." stays there.
	rc.ok(&plan9.Fcall{Type: plan9.Tattach, Tag: 1, Fid: 0, Afid: plan9.NOFID, Aname: "/a/b"})
	rx := rc.ok(&plan9.Fcall{Type: plan9.Tstat, Tag: 1, Fid: 0})
	d, _ := plan9.UnmarshalDir(rx.Stat)
	if d.Name != "/" || d.Uid != "strata" {
		t.Errorf("stat of the attach root: %v", d)
	}
	rx = rc.ok(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 0, Newfid: 1, Wname: []string{"..", "..", "c"}})
	if len(rx.Wqid) != 3 {
		t.Errorf("walk .. .. c below a/b: %v", rx)
	}
	if e := rc.fail(&plan9.Fcall{Type: plan9.Tattach, Tag: 1, Fid: 0, Afid: plan9.NOFID}); !strings.Contains(e, "fid 0 is in use") {
		t.Errorf("attach to a used fid: %q", e)
	}
	for _, bad := range []string{"a/../..", "nope", "a/b/c"} {
		if e := rc.fail(&plan9.Fcall{Type: plan9.Tattach, Tag: 1, Fid: 7, Afid: plan9.NOFID, Aname: bad}); e == "" {
			t.Errorf("aname %q: attached", bad)
		}
	}
}

func TestPlan9Walk(t *testing.T) {
	root := plan9TestTree(t, map[string]string{"sub/inner": "x", "top": "t"})
	addr := plan9Serve(t, root)
	rc := plan9DialAttach(t, addr)
	rootQid := rc.ok(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 0, Newfid: 1, Wname: []string{".."}}).Wqid[0]
	rstat := rc.ok(&plan9.Fcall{Type: plan9.Tstat, Tag: 1, Fid: 0})
	d, _ := plan9.UnmarshalDir(rstat.Stat)
	if rootQid != d.Qid {
		t.Errorf(".. from the root: qid %v, the root's is %v", rootQid, d.Qid)
	}
	rx := rc.ok(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 0, Newfid: 2, Wname: []string{"sub", "..", "sub", "inner"}})
	if len(rx.Wqid) != 4 || rx.Wqid[1] != rootQid || rx.Wqid[0] != rx.Wqid[2] {
		t.Errorf("walk sub .. sub inner: %v", rx.Wqid)
	}
	// A partial walk answers with the qids walked; newfid is not made.
	rx = rc.ok(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 0, Newfid: 3, Wname: []string{"sub", "nope", "x"}})
	if len(rx.Wqid) != 1 {
		t.Errorf("partial walk: %v", rx.Wqid)
	}
	if e := rc.fail(&plan9.Fcall{Type: plan9.Tstat, Tag: 1, Fid: 3}); !strings.Contains(e, "unknown fid 3") {
		t.Errorf("newfid after a partial walk: %s", e)
	}
	if e := rc.fail(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 0, Newfid: 3, Wname: []string{"nope"}}); !strings.Contains(e, "nope: file does not exist") {
		t.Errorf("walk nope: %s", e)
	}
	if rx := rc.ok(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 0, Newfid: 3, Wname: []string{"top", "x"}}); len(rx.Wqid) != 1 {
		t.Errorf("walk top x: %v, want a partial walk", rx)
	}
	if e := rc.fail(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 2, Newfid: 3, Wname: []string{"x"}}); !strings.Contains(e, "not a directory") {
		t.Errorf("walk from the file sub/inner: %s", e)
	}
	// newfid == fid moves the fid.
	rc.ok(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 0, Newfid: 4})
	rc.ok(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 4, Newfid: 4, Wname: []string{"sub"}})
	rx = rc.ok(&plan9.Fcall{Type: plan9.Tstat, Tag: 1, Fid: 4})
	if d, _ := plan9.UnmarshalDir(rx.Stat); d.Name != "sub" {
		t.Errorf("fid 4 after walking onto itself: %v", d)
	}
	// A used newfid, an open fid, and 16 names (the most) and 17.
	if e := rc.fail(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 0, Newfid: 4}); !strings.Contains(e, "fid 4 is in use") {
		t.Errorf("walk to a used newfid: %s", e)
	}
	rc.ok(&plan9.Fcall{Type: plan9.Topen, Tag: 1, Fid: 4, Mode: plan9.OREAD})
	if e := rc.fail(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 4, Newfid: 5}); !strings.Contains(e, "fid is open") {
		t.Errorf("walk from an open fid: %s", e)
	}
	sixteen := slices.Repeat([]string{"sub", ".."}, 8)
	if rx := rc.ok(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 0, Newfid: 5, Wname: sixteen}); len(rx.Wqid) != 16 {
		t.Errorf("16 names: %d qids", len(rx.Wqid))
	}
	b := plan9WalkFrame(1, 0, 6, append(sixteen, "sub"))
	rc.sendRaw(b)
	if rx := rc.recv(); rx.Type != plan9.Rerror || !strings.Contains(rx.Ename, "at most 16") {
		t.Errorf("17 names: %v", rx)
	}
}

// plan9WalkFrame builds a Twalk with any number of names.
func plan9WalkFrame(tag uint16, fid, newfid uint32, names []string) []byte {
	b := []byte{0, 0, 0, 0, plan9.Twalk, byte(tag), byte(tag >> 8)}
	b = plan9Put32(b, fid)
	b = plan9Put32(b, newfid)
	b = append(b, byte(len(names)), byte(len(names)>>8))
	for _, n := range names {
		b = append(b, byte(len(n)), byte(len(n)>>8))
		b = append(b, n...)
	}
	plan9Put32(b[:0], uint32(len(b)))
	return b
}

func plan9Put32(b []byte, v uint32) []byte {
	return append(b, byte(v), byte(v>>8), byte(v>>16), byte(v>>24))
}

func TestPlan9OpenModes(t *testing.T) {
	root := plan9TestTree(t, map[string]string{"f": "0123456789", "g": "ggg", "tmp": "scratch"})
	addr := plan9Serve(t, root)
	rc := plan9DialAttach(t, addr)
	walk := func(fid uint32, name string) {
		t.Helper()
		rc.ok(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 0, Newfid: fid, Wname: []string{name}})
	}
	// OWRITE: no reads. OREAD: no writes.
	walk(1, "f")
	rc.ok(&plan9.Fcall{Type: plan9.Topen, Tag: 1, Fid: 1, Mode: plan9.OWRITE})
	if e := rc.fail(&plan9.Fcall{Type: plan9.Tread, Tag: 1, Fid: 1, Count: 10}); !strings.Contains(e, "not open for reading") {
		t.Errorf("read of an OWRITE fid: %s", e)
	}
	if e := rc.fail(&plan9.Fcall{Type: plan9.Topen, Tag: 1, Fid: 1, Mode: plan9.OREAD}); !strings.Contains(e, "already open") {
		t.Errorf("second open: %s", e)
	}
	rc.ok(&plan9.Fcall{Type: plan9.Twrite, Tag: 1, Fid: 1, Offset: 0, Data: []byte("AB")})
	rc.ok(&plan9.Fcall{Type: plan9.Tclunk, Tag: 1, Fid: 1})
	walk(1, "f")
	rc.ok(&plan9.Fcall{Type: plan9.Topen, Tag: 1, Fid: 1, Mode: plan9.OEXEC})
	if rx := rc.ok(&plan9.Fcall{Type: plan9.Tread, Tag: 1, Fid: 1, Offset: 1, Count: 4}); string(rx.Data) != "B234" {
		t.Errorf("read: %q", rx.Data)
	}
	if e := rc.fail(&plan9.Fcall{Type: plan9.Twrite, Tag: 1, Fid: 1, Data: []byte("x")}); !strings.Contains(e, "not open for writing") {
		t.Errorf("write of an OEXEC fid: %s", e)
	}
	if rx := rc.ok(&plan9.Fcall{Type: plan9.Tread, Tag: 1, Fid: 1, Offset: 100, Count: 4}); len(rx.Data) != 0 {
		t.Errorf("read past the end: %q", rx.Data)
	}
	rc.ok(&plan9.Fcall{Type: plan9.Tclunk, Tag: 1, Fid: 1})
	// OTRUNC.
	walk(1, "g")
	if e := rc.fail(&plan9.Fcall{Type: plan9.Topen, Tag: 1, Fid: 1, Mode: plan9.OREAD | plan9.OTRUNC}); !strings.Contains(e, "OTRUNC") {
		t.Errorf("OREAD|OTRUNC: %s", e)
	}
	rc.ok(&plan9.Fcall{Type: plan9.Topen, Tag: 1, Fid: 1, Mode: plan9.ORDWR | plan9.OTRUNC})
	rc.ok(&plan9.Fcall{Type: plan9.Tclunk, Tag: 1, Fid: 1})
	if got, _ := plan9ReadFile(t, root, "g"); got != "" {
		t.Errorf("g after OTRUNC: %q", got)
	}
	// ORCLOSE removes at clunk.
	walk(1, "tmp")
	rc.ok(&plan9.Fcall{Type: plan9.Topen, Tag: 1, Fid: 1, Mode: plan9.OREAD | plan9.ORCLOSE})
	rc.ok(&plan9.Fcall{Type: plan9.Tclunk, Tag: 1, Fid: 1})
	if _, err := fs.Walk(context.Background(), root, "tmp"); !errors.Is(err, iofs.ErrNotExist) {
		t.Errorf("tmp after ORCLOSE: %v", err)
	}
	// Directories open for reading only; ORCLOSE of the root is refused.
	walk(1, "..")
	for _, m := range []uint8{plan9.OWRITE, plan9.ORDWR, plan9.OREAD | plan9.OTRUNC | plan9.OWRITE} {
		if e := rc.fail(&plan9.Fcall{Type: plan9.Topen, Tag: 1, Fid: 1, Mode: m}); !strings.Contains(e, "is a directory") {
			t.Errorf("open the root with mode %d: %s", m, e)
		}
	}
	if e := rc.fail(&plan9.Fcall{Type: plan9.Topen, Tag: 1, Fid: 1, Mode: plan9.OREAD | plan9.ORCLOSE}); !strings.Contains(e, "ORCLOSE") {
		t.Errorf("ORCLOSE of the root: %s", e)
	}
	if e := rc.fail(&plan9.Fcall{Type: plan9.Twrite, Tag: 1, Fid: 1, Data: []byte("x")}); !strings.Contains(e, "not open") {
		t.Errorf("write of an unopened fid: %s", e)
	}
}

func TestPlan9Create(t *testing.T) {
	root := plan9TestTree(t, map[string]string{"exists": "e"})
	ctx := context.Background()
	private, err := root.Mkdir(ctx, "private", 0o700)
	if err != nil {
		t.Fatal(err)
	}
	_ = private
	addr := plan9Serve(t, root)
	rc := plan9DialAttach(t, addr)
	clone := func(fid uint32, names ...string) {
		t.Helper()
		rc.ok(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 0, Newfid: fid, Wname: names})
	}
	clone(1)
	rx := rc.ok(&plan9.Fcall{Type: plan9.Tcreate, Tag: 1, Fid: 1, Name: "d", Perm: plan9.DMDIR | 0o777, Mode: plan9.OREAD})
	if rx.Qid.Type != plan9.QTDIR || rx.Iounit != 8192-24 {
		t.Errorf("create a directory: %v", rx)
	}
	// The fid is now the new directory, open for reading.
	if rx := rc.ok(&plan9.Fcall{Type: plan9.Tread, Tag: 1, Fid: 1, Count: 1000}); len(rx.Data) != 0 {
		t.Errorf("listing of a new directory: %d bytes", len(rx.Data))
	}
	rc.ok(&plan9.Fcall{Type: plan9.Tclunk, Tag: 1, Fid: 1})
	n, err := fs.Walk(ctx, root, "d")
	if err != nil {
		t.Fatal(err)
	}
	// The parent's 0755 masks the 0777 asked for.
	if info, _ := n.Stat(ctx); !info.IsDir() || info.Mode.Perm() != 0o755 {
		t.Errorf("d: %v", info.Mode)
	}
	clone(1, "private")
	rc.ok(&plan9.Fcall{Type: plan9.Tcreate, Tag: 1, Fid: 1, Name: "f", Perm: 0o666, Mode: plan9.OWRITE})
	rc.ok(&plan9.Fcall{Type: plan9.Twrite, Tag: 1, Fid: 1, Data: []byte("hi")})
	rc.ok(&plan9.Fcall{Type: plan9.Tclunk, Tag: 1, Fid: 1})
	if n, err := fs.Walk(ctx, root, "private/f"); err != nil {
		t.Error(err)
	} else if info, _ := n.Stat(ctx); info.Mode.Perm() != 0o600 {
		t.Errorf("private/f: mode %v, want 0600 (0666 masked by the parent's 0700)", info.Mode)
	}
	// DMAPPEND: every write goes to the end.
	clone(1)
	rc.ok(&plan9.Fcall{Type: plan9.Tcreate, Tag: 1, Fid: 1, Name: "log", Perm: plan9.DMAPPEND | 0o644, Mode: plan9.OWRITE})
	rc.ok(&plan9.Fcall{Type: plan9.Twrite, Tag: 1, Fid: 1, Offset: 0, Data: []byte("one ")})
	rc.ok(&plan9.Fcall{Type: plan9.Twrite, Tag: 1, Fid: 1, Offset: 0, Data: []byte("two")})
	rc.ok(&plan9.Fcall{Type: plan9.Tclunk, Tag: 1, Fid: 1})
	if got, _ := plan9ReadFile(t, root, "log"); got != "one two" {
		t.Errorf("append-only file: %q", got)
	}
	// An existing name, a bad name, a create in a file, a create on an open fid.
	clone(1)
	if e := rc.fail(&plan9.Fcall{Type: plan9.Tcreate, Tag: 1, Fid: 1, Name: "exists", Perm: 0o644, Mode: plan9.OWRITE}); !strings.Contains(e, "already exists") {
		t.Errorf("create over an existing file: %s", e)
	}
	for _, bad := range []string{"", ".", "..", "a/b", "/", "x\x00y", strings.Repeat("n", 256)} {
		if e := rc.fail(&plan9.Fcall{Type: plan9.Tcreate, Tag: 1, Fid: 1, Name: bad, Perm: 0o644, Mode: plan9.OWRITE}); !strings.Contains(e, "invalid") && !strings.Contains(e, "too long") {
			t.Errorf("create %q: %s", bad, e)
		}
	}
	if e := rc.fail(&plan9.Fcall{Type: plan9.Tcreate, Tag: 1, Fid: 1, Name: "dd", Perm: plan9.DMDIR | 0o755, Mode: plan9.OWRITE}); !strings.Contains(e, "reading only") {
		t.Errorf("create a directory for writing: %s", e)
	}
	clone(2, "exists")
	if e := rc.fail(&plan9.Fcall{Type: plan9.Tcreate, Tag: 1, Fid: 2, Name: "x", Perm: 0o644, Mode: plan9.OWRITE}); !strings.Contains(e, "not a directory") {
		t.Errorf("create in a file: %s", e)
	}
	list, _ := root.ReadDir(ctx)
	var names []string
	for _, e := range list {
		names = append(names, e.Name)
	}
	if got := strings.Join(names, ","); got != "d,exists,log,private" {
		t.Errorf("the root holds %s", got)
	}
}

// Directory reads pack whole entries and follow the offsets of the spec.
func TestPlan9DirRead(t *testing.T) {
	files := map[string]string{}
	var want []string
	for i := range 60 {
		name := fmt.Sprintf("file-%02d-%s", i, strings.Repeat("n", i*3))
		files[name] = "x"
		want = append(want, name)
	}
	slices.Sort(want)
	addr := plan9Serve(t, plan9TestTree(t, files))
	rc := plan9DialAttach(t, addr)
	rc.ok(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 0, Newfid: 1})
	rc.ok(&plan9.Fcall{Type: plan9.Topen, Tag: 1, Fid: 1, Mode: plan9.OREAD})
	readAll := func(count uint32) []string {
		var got []string
		off := uint64(0)
		for {
			rx := rc.ok(&plan9.Fcall{Type: plan9.Tread, Tag: 1, Fid: 1, Offset: off, Count: count})
			if len(rx.Data) == 0 {
				return got
			}
			if len(rx.Data) > int(count) {
				t.Fatalf("read %d bytes with count %d", len(rx.Data), count)
			}
			b := rx.Data
			for len(b) > 0 {
				n := int(b[0]) | int(b[1])<<8
				d, err := plan9.UnmarshalDir(b[:2+n]) // panics or fails on a split entry
				if err != nil {
					t.Fatalf("entry split across reads: %v", err)
				}
				got = append(got, d.Name)
				b = b[2+n:]
			}
			off += uint64(len(rx.Data))
		}
	}
	for _, count := range []uint32{400, 1000, 8000} {
		if got := readAll(count); !slices.Equal(got, want) {
			t.Errorf("count %d: got %d names %v", count, len(got), got)
		}
	}
	rc.ok(&plan9.Fcall{Type: plan9.Tread, Tag: 1, Fid: 1, Offset: 0, Count: 400})
	if e := rc.fail(&plan9.Fcall{Type: plan9.Tread, Tag: 1, Fid: 1, Offset: 3, Count: 400}); !strings.Contains(e, "offset 3") {
		t.Errorf("read at a bad offset: %s", e)
	}
	if e := rc.fail(&plan9.Fcall{Type: plan9.Tread, Tag: 1, Fid: 1, Offset: 0, Count: 20}); !strings.Contains(e, "too small") {
		t.Errorf("read with a tiny count: %s", e)
	}
}

// plan9CountTree wraps a tree and counts the handles open in it, the
// syncs, and can make Close fail.
type plan9CountTree struct {
	fs.Dir
	mu       sync.Mutex
	open     int
	syncs    int
	closeErr error
}

func (c *plan9CountTree) wrap(n fs.Node) fs.Node {
	switch n := n.(type) {
	case fs.Dir:
		return &plan9CountDir{Dir: n, c: c}
	case fs.File:
		return &plan9CountFile{File: n, c: c}
	}
	return n
}

type plan9CountDir struct {
	fs.Dir
	c *plan9CountTree
}

func (d *plan9CountDir) Lookup(ctx context.Context, name string) (fs.Node, error) {
	n, err := d.Dir.Lookup(ctx, name)
	if err != nil {
		return nil, err
	}
	return d.c.wrap(n), nil
}

func (d *plan9CountDir) Create(ctx context.Context, name string, flag fs.Flag, perm iofs.FileMode) (fs.File, fs.Handle, error) {
	f, h, err := d.Dir.Create(ctx, name, flag, perm)
	if err != nil {
		return nil, nil, err
	}
	return &plan9CountFile{File: f, c: d.c}, d.c.handle(h), nil
}

func (d *plan9CountDir) Mkdir(ctx context.Context, name string, perm iofs.FileMode) (fs.Dir, error) {
	n, err := d.Dir.Mkdir(ctx, name, perm)
	if err != nil {
		return nil, err
	}
	return &plan9CountDir{Dir: n, c: d.c}, nil
}

func (d *plan9CountDir) Rename(ctx context.Context, oldName string, newDir fs.Dir, newName string) error {
	if cd, ok := newDir.(*plan9CountDir); ok {
		newDir = cd.Dir
	}
	return d.Dir.Rename(ctx, oldName, newDir, newName)
}

type plan9CountFile struct {
	fs.File
	c *plan9CountTree
}

func (f *plan9CountFile) Open(ctx context.Context, flag fs.Flag) (fs.Handle, error) {
	h, err := f.File.Open(ctx, flag)
	if err != nil {
		return nil, err
	}
	return f.c.handle(h), nil
}

func (c *plan9CountTree) handle(h fs.Handle) fs.Handle {
	c.mu.Lock()
	c.open++
	c.mu.Unlock()
	return &plan9CountHandle{Handle: h, c: c}
}

func (c *plan9CountTree) counts() (open, syncs int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.open, c.syncs
}

type plan9CountHandle struct {
	fs.Handle
	c *plan9CountTree
}

func (h *plan9CountHandle) Sync(ctx context.Context) error {
	h.c.mu.Lock()
	h.c.syncs++
	h.c.mu.Unlock()
	return h.Handle.Sync(ctx)
}

func (h *plan9CountHandle) Close(ctx context.Context) error {
	h.c.mu.Lock()
	h.c.open--
	err := h.c.closeErr
	h.c.mu.Unlock()
	if cerr := h.Handle.Close(ctx); cerr != nil {
		return cerr
	}
	return err
}

func newPlan9CountTree(root fs.Dir) (*plan9CountTree, fs.Dir) {
	c := &plan9CountTree{Dir: root}
	return c, &plan9CountDir{Dir: root, c: c}
}

// Tclunk returns Handle.Close's error: that is how a client learns that
// what it wrote was not acknowledged. The fid is gone all the same.
func TestPlan9ClunkError(t *testing.T) {
	ct, root := newPlan9CountTree(plan9TestTree(t, map[string]string{"f": "x"}))
	ct.closeErr = &fs.Error{Op: "close", Path: "f", Kind: fs.NoSpace}
	addr := plan9Serve(t, root)
	_, fsys := plan9Mount(t, addr, "u")
	fid, err := fsys.Open("f", plan9.OWRITE)
	if err != nil {
		t.Fatal(err)
	}
	fid.Write([]byte("data"))
	if err := fid.Close(); err == nil || !strings.Contains(err.Error(), "close f: no space left") {
		t.Errorf("clunk: %v, want the Close error", err)
	}
	rc := plan9DialAttach(t, addr)
	rc.ok(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 0, Newfid: 1, Wname: []string{"f"}})
	rc.ok(&plan9.Fcall{Type: plan9.Topen, Tag: 1, Fid: 1, Mode: plan9.OREAD})
	rc.fail(&plan9.Fcall{Type: plan9.Tclunk, Tag: 1, Fid: 1})
	if e := rc.fail(&plan9.Fcall{Type: plan9.Tclunk, Tag: 1, Fid: 1}); !strings.Contains(e, "unknown fid 1") {
		t.Errorf("second clunk: %s", e)
	}
	if e := rc.fail(&plan9.Fcall{Type: plan9.Tremove, Tag: 1, Fid: 0}); !strings.Contains(e, "root cannot be removed") {
		t.Errorf("remove the root: %s", e)
	}
	if e := rc.fail(&plan9.Fcall{Type: plan9.Tstat, Tag: 1, Fid: 0}); !strings.Contains(e, "unknown fid 0") {
		t.Errorf("Tremove must clunk even when it fails: %s", e)
	}
}

// When a connection ends, every fid is clunked: handles closed, ORCLOSE
// files removed.
func TestPlan9ConnectionEndCleansUp(t *testing.T) {
	mem := plan9TestTree(t, map[string]string{"a": "a", "b": "b", "tmp": "t"})
	ct, root := newPlan9CountTree(mem)
	addr := plan9Serve(t, root)
	rc := plan9DialAttach(t, addr)
	for i, name := range []string{"a", "b", "tmp"} {
		fid := uint32(i + 1)
		rc.ok(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 0, Newfid: fid, Wname: []string{name}})
		mode := uint8(plan9.ORDWR)
		if name == "tmp" {
			mode |= plan9.ORCLOSE
		}
		rc.ok(&plan9.Fcall{Type: plan9.Topen, Tag: 1, Fid: fid, Mode: mode})
	}
	if open, _ := ct.counts(); open != 3 {
		t.Fatalf("%d handles open, want 3", open)
	}
	rc.c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		open, _ := ct.counts()
		_, err := fs.Walk(context.Background(), mem, "tmp")
		if open == 0 && errors.Is(err, iofs.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the connection ended: %d handles open, tmp: %v", open, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestPlan9Wstat(t *testing.T) {
	ct, root := newPlan9CountTree(plan9TestTree(t, map[string]string{"f": "0123456789", "other": "o", "d/x": "x"}))
	addr := plan9Serve(t, root)
	rc := plan9DialAttach(t, addr)
	wstat := func(fid uint32, edit func(*plan9.Dir)) *plan9.Fcall {
		var d plan9.Dir
		d.Null()
		edit(&d)
		b, _ := d.Bytes()
		return rc.rpc(&plan9.Fcall{Type: plan9.Twstat, Tag: 1, Fid: fid, Stat: b})
	}
	stat := func(fid uint32) *plan9.Dir {
		t.Helper()
		d, err := plan9.UnmarshalDir(rc.ok(&plan9.Fcall{Type: plan9.Tstat, Tag: 1, Fid: fid}).Stat)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	rc.ok(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 0, Newfid: 1, Wname: []string{"f"}})
	rc.ok(&plan9.Fcall{Type: plan9.Topen, Tag: 1, Fid: 1, Mode: plan9.OWRITE})
	// All "don't touch": sync.
	if rx := wstat(1, func(*plan9.Dir) {}); rx.Type != plan9.Rwstat {
		t.Fatalf("sync: %v", rx)
	}
	if _, syncs := ct.counts(); syncs != 1 {
		t.Errorf("%d syncs, want 1", syncs)
	}
	// Length, mode, mtime and name in one wstat.
	if rx := wstat(1, func(d *plan9.Dir) {
		d.Length, d.Mode, d.Mtime, d.Name = 4, 0o600, 1_000_000, "g"
	}); rx.Type != plan9.Rwstat {
		t.Fatalf("wstat: %v", rx)
	}
	d := stat(1)
	if d.Name != "g" || d.Length != 4 || d.Mode != 0o600 || d.Mtime != 1_000_000 {
		t.Errorf("after wstat: %v", d)
	}
	if got, _ := plan9ReadFile(t, ct.Dir, "g"); got != "0123" {
		t.Errorf("g holds %q", got)
	}
	// The fid follows its rename: writes still land in g.
	rc.ok(&plan9.Fcall{Type: plan9.Twrite, Tag: 1, Fid: 1, Offset: 4, Data: []byte("45")})
	// Nothing changes when part of a wstat is refused.
	for _, tc := range []struct {
		name string
		edit func(*plan9.Dir)
		want string
	}{
		{"rename over an existing file", func(d *plan9.Dir) { d.Name, d.Length = "other", 0 }, "already exists"},
		{"rename with a slash", func(d *plan9.Dir) { d.Name = "a/b" }, "invalid"},
		{"rename to ..", func(d *plan9.Dir) { d.Name = ".." }, "invalid"},
		{"set the directory bit", func(d *plan9.Dir) { d.Mode = plan9.DMDIR | 0o755 }, "directory bit"},
		{"change the owner", func(d *plan9.Dir) { d.Uid, d.Mode = "root", 0o777 }, "owner"},
		{"change the group", func(d *plan9.Dir) { d.Gid = "wheel" }, "group"},
		{"length beyond int64", func(d *plan9.Dir) { d.Length = 1 << 63 }, "length"},
	} {
		rx := wstat(1, tc.edit)
		if rx.Type != plan9.Rerror || !strings.Contains(rx.Ename, tc.want) {
			t.Errorf("%s: %v, want an error saying %q", tc.name, rx, tc.want)
		}
	}
	d = stat(1)
	if d.Name != "g" || d.Length != 6 || d.Mode != 0o600 {
		t.Errorf("after refused wstats: %v", d)
	}
	// Sending back what stat said changes nothing and is allowed.
	b, _ := d.Bytes()
	if rx := rc.rpc(&plan9.Fcall{Type: plan9.Twstat, Tag: 1, Fid: 1, Stat: b}); rx.Type != plan9.Rwstat {
		t.Errorf("wstat of the stat itself: %v", rx)
	}
	// Directories: length 0 is fine, any other is not; the root keeps its name.
	rc.ok(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 0, Newfid: 2, Wname: []string{"d"}})
	if rx := wstat(2, func(d *plan9.Dir) { d.Length = 0 }); rx.Type != plan9.Rwstat {
		t.Errorf("directory length 0: %v", rx)
	}
	if rx := wstat(2, func(d *plan9.Dir) { d.Length = 10 }); rx.Type != plan9.Rerror {
		t.Errorf("directory length 10: %v", rx)
	}
	if rx := wstat(2, func(d *plan9.Dir) { d.Name = "d2" }); rx.Type != plan9.Rwstat {
		t.Errorf("rename a directory: %v", rx)
	}
	if rx := rc.ok(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 2, Newfid: 3, Wname: []string{"x"}}); len(rx.Wqid) != 1 {
		t.Errorf("walk in the renamed directory: %v", rx)
	}
	if rx := wstat(0, func(d *plan9.Dir) { d.Name = "newroot" }); rx.Type != plan9.Rerror || !strings.Contains(rx.Ename, "root") {
		t.Errorf("rename the root: %v", rx)
	}
}

// Each fid table is bounded; the error says so.
func TestPlan9FidCap(t *testing.T) {
	addr := plan9Serve(t, plan9TestTree(t, map[string]string{"f": "x"}))
	rc := plan9DialAttach(t, addr)
	go func() {
		for i := 1; i < MaxFids9P; i++ {
			if rc.trySend(&plan9.Fcall{Type: plan9.Twalk, Tag: uint16(i), Fid: 0, Newfid: uint32(i)}) != nil {
				return
			}
		}
	}()
	for i := 1; i < MaxFids9P; i++ {
		if rx := rc.recv(); rx.Type != plan9.Rwalk {
			t.Fatalf("walk %d: %v", i, rx)
		}
	}
	e := rc.fail(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 0, Newfid: 99999})
	if !strings.Contains(e, "too many fids") {
		t.Errorf("fid %d: %s", MaxFids9P+1, e)
	}
	rc.ok(&plan9.Fcall{Type: plan9.Tclunk, Tag: 1, Fid: 5})
	rc.ok(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 0, Newfid: 99999})
}

// A recorded conversation, readable as it goes over the wire.
func TestPlan9Transcript(t *testing.T) {
	addr := plan9Serve(t, plan9TestTree(t, nil))
	rc := plan9Dial(t, addr)
	const script = `
-> Tversion tag 65535 msize 8192 version '9P2000.u'
<- Rversion tag 65535 msize 8192 version '9P2000'
-> Tauth tag 1 afid 9 uname glenda aname
<- Rerror tag 1 ename authentication not required
-> Tattach tag 1 fid 0 afid NOFID uname glenda aname
<- Rattach tag 1 qid 0x1.0.d
-> Twalk tag 2 fid 0 newfid 1 wname [..]
<- Rwalk tag 2 wqid [0x1.0.d]
-> Tcreate tag 3 fid 1 name notes perm --rw-r--r-- mode ORDWR
<- Rcreate tag 3 qid 0x2.0 iounit 8168
-> Twrite tag 4 fid 1 offset 0 data 'hello'
<- Rwrite tag 4 count 5
-> Tread tag 5 fid 1 offset 1 count 3
<- Rread tag 5 count 3 "ell"
-> Tclunk tag 6 fid 1
<- Rclunk tag 6
-> Twalk tag 7 fid 0 newfid 2 wname [notes missing]
<- Rwalk tag 7 wqid [0x2.1]
-> Twalk tag 8 fid 0 newfid 2 wname [missing]
<- Rerror tag 8 ename lookup missing: file does not exist
-> Twalk tag 9 fid 0 newfid 2 wname [notes]
<- Rwalk tag 9 wqid [0x2.1]
-> Tremove tag 10 fid 2
<- Rremove tag 10
-> Tstat tag 11 fid 2
<- Rerror tag 11 ename stat: bad file handle: unknown fid 2
-> Tflush tag 12 oldtag 5
<- Rflush tag 12
`
	for _, line := range strings.Split(strings.TrimSpace(script), "\n") {
		dir, text, _ := strings.Cut(line, " ")
		switch dir {
		case "->":
			f, err := plan9.ParseFcall(text)
			if err != nil {
				t.Fatalf("%s: %v", text, err)
			}
			rc.send(f)
		case "<-":
			if got := rc.recv().String(); got != text {
				t.Fatalf("\ngot  %s\nwant %s", got, text)
			}
		}
	}
}

// plan9Panicky is a node whose Stat panics.
type plan9Panicky struct{ fs.FileDefaults }

func (plan9Panicky) Stat(context.Context) (fs.Info, error) { panic("tree bug") }
func (plan9Panicky) Open(context.Context, fs.Flag) (fs.Handle, error) {
	return nil, errors.New("unreachable")
}

// A panic in a tree becomes an Rerror; the connection and server go on.
func TestPlan9HandlerPanic(t *testing.T) {
	root := &plan9Extra{Dir: plan9TestTree(t, nil), extra: map[string]fs.Node{"bad": plan9Panicky{}}}
	addr := plan9Serve(t, root, func(s *Server) { s.Log = slog.New(slog.DiscardHandler) })
	rc := plan9DialAttach(t, addr)
	if e := rc.fail(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 0, Newfid: 1, Wname: []string{"bad"}}); !strings.Contains(e, "internal server error") {
		t.Errorf("walk to a panicking node: %s", e)
	}
	rc.ok(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 0, Newfid: 1})
}
