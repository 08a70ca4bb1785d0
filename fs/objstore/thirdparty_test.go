package objstore

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"9fans.net/go/plan9"
	"9fans.net/go/plan9/client"
)

// Third-party clients against the store served by the 9P front end, as
// for the local store (fs/ninep's TestPlan9Client and TestLinuxDiodTools):
// what they write is in the bucket, acknowledged, and read whole by
// another store (edge) on the same prefix; what others put in the bucket
// is listed and read.

// TestPlan9Client: the 9fans.net client (9P2000) creates, writes, reads
// back, lists, renames, changes the mode of and removes files and
// directories in the store.
func TestPlan9Client(t *testing.T) {
	bucket := newBucket(t)
	s := openStore(t, config(t, bucket, "nine"))
	put(t, s.Root(), "hello.txt", []byte("hello, world\n"))
	if _, err := s.Root().Mkdir(ctx, "sub", 0o755); err != nil {
		t.Fatal(err)
	}
	c, err := client.Dial("tcp", serve9P(t, s.Root()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fsys, err := c.Attach(nil, "alice", "")
	if err != nil {
		t.Fatal(err)
	}
	// Another edge on the same prefix sees what was acknowledged.
	other := openStore(t, config(t, bucket, "nine"))

	// Create and write: 320 kB, many Twrites of at most 64 KiB; the
	// clunk uploads.
	data := bytes.Repeat([]byte("0123456789abcdef"), 20_000)
	fid, err := fsys.Create("new.txt", plan9.ORDWR, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := fid.Write(data); err != nil || n != len(data) {
		t.Fatalf("write: %d, %v", n, err)
	}
	if err := fid.Close(); err != nil {
		t.Fatalf("clunk: %v", err)
	}
	if got := keys(t, bucket); !slices.Equal(got, []string{"nine/hello.txt", "nine/new.txt", "nine/sub/"}) {
		t.Errorf("objects after the create: %q", got)
	}
	if got, err := get(t, other.Root(), "new.txt"); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the other edge reads %d bytes (%v), want %d", len(got), err, len(data))
	}

	// Read back through the client.
	fid, err = fsys.Open("new.txt", plan9.OREAD)
	if err != nil {
		t.Fatal(err)
	}
	back, err := io.ReadAll(fid)
	fid.Close()
	if err != nil || !bytes.Equal(back, data) {
		t.Fatalf("read back %d bytes (%v), want %d", len(back), err, len(data))
	}

	// List: names, kinds and sizes (a listing carries no mode: Stat
	// does).
	d, err := fsys.Open("/", plan9.OREAD)
	if err != nil {
		t.Fatal(err)
	}
	dirs, err := d.Dirreadall()
	d.Close()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range dirs {
		names = append(names, e.Name)
		switch e.Name {
		case "sub":
			if e.Mode&plan9.DMDIR == 0 || e.Qid.Type&plan9.QTDIR == 0 {
				t.Errorf("sub: mode %v qid %v, want a directory", e.Mode, e.Qid)
			}
		case "new.txt":
			if e.Length != uint64(len(data)) || e.Mode&plan9.DMDIR != 0 {
				t.Errorf("new.txt in the listing: length %d mode %v", e.Length, e.Mode)
			}
		case "hello.txt":
			if e.Length != 13 {
				t.Errorf("hello.txt in the listing: length %d", e.Length)
			}
		}
	}
	if got := strings.Join(names, ","); got != "hello.txt,new.txt,sub" {
		t.Errorf("listing: %s", got)
	}
	st, err := fsys.Stat("new.txt")
	if err != nil {
		t.Fatal(err)
	}
	if st.Name != "new.txt" || st.Length != uint64(len(data)) || st.Qid.Type != plan9.QTFILE || st.Mode != 0o640 {
		t.Errorf("stat: %v", st)
	}

	// Rename (Twstat of the name): a copy, then a delete of the old key.
	var nd plan9.Dir
	nd.Null()
	nd.Name = "renamed.txt"
	if err := fsys.Wstat("new.txt", &nd); err != nil {
		t.Fatalf("rename: %v", err)
	}
	if _, err := fsys.Stat("new.txt"); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("stat of the old name: %v", err)
	}
	if st, err := fsys.Stat("renamed.txt"); err != nil || st.Length != uint64(len(data)) || st.Mode != 0o640 {
		t.Errorf("stat of the new name: %v, %v", st, err)
	}
	if got := keys(t, bucket); !slices.Equal(got, []string{"nine/hello.txt", "nine/renamed.txt", "nine/sub/"}) {
		t.Errorf("objects after the rename: %q", got)
	}
	if got, err := get(t, other.Root(), "renamed.txt"); err != nil || !bytes.Equal(got, data) {
		t.Errorf("the other edge reads %d bytes of the renamed file (%v)", len(got), err)
	}

	// Mode (Twstat of the mode): kept in the object's metadata.
	nd.Null()
	nd.Mode = 0o600
	if err := fsys.Wstat("renamed.txt", &nd); err != nil {
		t.Fatalf("chmod: %v", err)
	}
	if n, err := permOf(other, "renamed.txt"); err != nil || n != 0o600 {
		t.Errorf("mode seen by the other edge: %o, %v", n, err)
	}

	// A directory, a file in it, removes.
	dfid, err := fsys.Create("sub/newdir", plan9.OREAD, plan9.DMDIR|0o755)
	if err != nil {
		t.Fatal(err)
	}
	dfid.Close()
	f2, err := fsys.Create("sub/newdir/leaf", plan9.OWRITE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f2.Write([]byte("leaf")); err != nil {
		t.Fatal(err)
	}
	if err := f2.Close(); err != nil {
		t.Fatal(err)
	}
	expect(t, other.Root(), "sub/newdir/leaf", "leaf")
	if err := fsys.Remove("sub/newdir"); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("remove of a non-empty directory: %v", err)
	}
	for _, p := range []string{"sub/newdir/leaf", "sub/newdir", "renamed.txt"} {
		if err := fsys.Remove(p); err != nil {
			t.Fatalf("remove %s: %v", p, err)
		}
	}
	if err := fsys.Remove("renamed.txt"); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("remove of a missing file: %v", err)
	}
	if got := keys(t, bucket); !slices.Equal(got, []string{"nine/hello.txt", "nine/sub/"}) {
		t.Errorf("objects left: %q", got)
	}
}

// permOf is the permission bits of the file at p in s, by Stat.
func permOf(s *Store, p string) (uint32, error) {
	n, err := s.Root().Lookup(ctx, p)
	if err != nil {
		return 0, err
	}
	info, err := n.Stat(ctx)
	if err != nil {
		return 0, err
	}
	return uint32(info.Mode.Perm()), nil
}

// diodTool finds one of Debian's diod tools. In CI they are always
// installed, so a missing tool fails the test there; elsewhere it skips.
func diodTool(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/usr/bin", "/sbin"} {
		if _, err := os.Stat(dir + "/" + name); err == nil {
			return dir + "/" + name
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is not installed (apt-get install diod); CI requires it", name)
	}
	t.Skipf("%s is not installed (apt-get install diod)", name)
	return ""
}

func runDiod(t *testing.T, tool string, args ...string) string {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(c, tool, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\nstderr: %s", tool, strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}

// TestDiodTools: Debian's diodcat and diodls (libnpclient, 9P2000.L) read
// files of the store, one of several blocks of the read cache and one put
// into the bucket by another S3 client, and list its directories.
func TestDiodTools(t *testing.T) {
	diodcat := diodTool(t, "diodcat")
	diodls := diodTool(t, "diodls")

	bucket := newBucket(t)
	s := openStore(t, config(t, bucket, "diod"))
	put(t, s.Root(), "hello.txt", []byte("hello from strata\n"))
	big := strings.Repeat("0123456789abcdef", 200_000) // 3.2 MB: four blocks, many reads
	put(t, s.Root(), "big", []byte(big))
	sub, err := s.Root().Mkdir(ctx, "sub", 0o755)
	if err != nil {
		t.Fatal(err)
	}
	put(t, sub, "inner", []byte("deeper\n"))
	putRaw(t, bucket, "diod/foreign/object", []byte("put by another client\n"))
	addr := serve9P(t, s.Root())
	server := []string{"-s", addr, "-a", "/", "-t", "30"}

	if got := runDiod(t, diodcat, append(server, "hello.txt")...); got != "hello from strata\n" {
		t.Errorf("diodcat hello.txt: %q", got)
	}
	if got := runDiod(t, diodcat, append(server, "big")...); got != big {
		t.Errorf("diodcat big: %d bytes, want %d", len(got), len(big))
	}
	if got := runDiod(t, diodcat, append(server, "-m", "8192", "big")...); got != big {
		t.Errorf("diodcat big with msize 8192: %d bytes, want %d", len(got), len(big))
	}
	if got := runDiod(t, diodcat, append(server, "sub/inner")...); got != "deeper\n" {
		t.Errorf("diodcat sub/inner: %q", got)
	}
	if got := runDiod(t, diodcat, append(server, "foreign/object")...); got != "put by another client\n" {
		t.Errorf("diodcat foreign/object: %q", got)
	}
	// An aname below the root.
	if got := runDiod(t, diodcat, "-s", addr, "-a", "/sub", "-t", "30", "inner"); got != "deeper\n" {
		t.Errorf("diodcat -a /sub inner: %q", got)
	}

	if got := sorted(strings.Fields(runDiod(t, diodls, server...))); !slices.Equal(got, []string{"big", "foreign", "hello.txt", "sub"}) {
		t.Errorf("diodls: %q", got)
	}
	if got := strings.Fields(runDiod(t, diodls, append(server, "sub")...)); !slices.Equal(got, []string{"inner"}) {
		t.Errorf("diodls sub: %q", got)
	}
	if got := strings.Fields(runDiod(t, diodls, append(server, "foreign")...)); !slices.Equal(got, []string{"object"}) {
		t.Errorf("diodls foreign: %q", got)
	}
	long := runDiod(t, diodls, append(server, "-l", "hello.txt")...)
	if !strings.Contains(long, "hello.txt") || !strings.Contains(long, " 18 ") {
		t.Errorf("diodls -l hello.txt: %q (want the name and the size 18)", long)
	}
	long = runDiod(t, diodls, append(server, "-l", "big")...)
	if !strings.Contains(long, "big") || !strings.Contains(long, " 3200000 ") {
		t.Errorf("diodls -l big: %q (want the name and the size 3200000)", long)
	}
	// The tools only read: the bucket is as it was.
	if got := keys(t, bucket); !slices.Equal(got, []string{"diod/big", "diod/foreign/object", "diod/hello.txt", "diod/sub/", "diod/sub/inner"}) {
		t.Errorf("objects: %q", got)
	}
}

func sorted(s []string) []string {
	slices.Sort(s)
	return s
}
