package ninep

import (
	"bytes"
	"encoding/binary"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"9fans.net/go/plan9"

	"strata/fs/store"
)

// plan9Frame builds a frame of type typ and tag with body, the size field
// set to the real length.
func plan9Frame(typ uint8, tag uint16, body ...[]byte) []byte {
	b := []byte{0, 0, 0, 0, typ, byte(tag), byte(tag >> 8)}
	for _, p := range body {
		b = append(b, p...)
	}
	binary.LittleEndian.PutUint32(b, uint32(len(b)))
	return b
}

func plan9U16(v uint16) []byte { return binary.LittleEndian.AppendUint16(nil, v) }
func plan9U32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }
func plan9U64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }
func plan9Str(s string) []byte { return append(plan9U16(uint16(len(s))), s...) }

// plan9Snapshot lists every file under dir with its content.
func plan9Snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	snap := map[string]string{}
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if info.IsDir() {
			snap[rel+"/"] = info.Mode().String()
			return nil
		}
		b, err := os.ReadFile(p)
		snap[rel] = info.Mode().String() + " " + string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

// Hostile bytes through the server, against a durable tree on disk with
// a secret beside it: the server stays up, and nothing outside the tree
// is touched.
func TestPlan9Hostile(t *testing.T) {
	base := t.TempDir()
	outside := filepath.Join(base, "outside")
	os.MkdirAll(outside, 0o755)
	os.WriteFile(filepath.Join(outside, "secret"), []byte("do not touch"), 0o600)
	st, err := store.Open(filepath.Join(base, "tree"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	os.WriteFile(filepath.Join(base, "tree", "file"), []byte("0123456789"), 0o644)
	before := plan9Snapshot(t, outside)
	addr := plan9Serve(t, st.Root())

	t.Run("walks", func(t *testing.T) {
		rc := plan9DialAttach(t, addr)
		rootQid := rc.ok(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 0, Newfid: 1, Wname: []string{".."}}).Wqid[0]
		rx := rc.ok(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 0, Newfid: 2, Wname: []string{"..", "..", ".."}})
		if len(rx.Wqid) != 3 || rx.Wqid[2] != rootQid {
			t.Errorf(".. .. ..: %v, want the root", rx.Wqid)
		}
		rx = rc.ok(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 0, Newfid: 3, Wname: []string{"..", "outside"}})
		if len(rx.Wqid) != 1 {
			t.Errorf(".. outside: %v, want a partial walk that stops at the root", rx.Wqid)
		}
		for _, name := range []string{"/", "", ".", "a\x00b", "\x00", "../outside", "..\x00", "/etc", "a/b", strings.Repeat("x", 300)} {
			e := rc.fail(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 0, Newfid: 4, Wname: []string{name}})
			if !strings.Contains(e, "invalid") && !strings.Contains(e, "too long") {
				t.Errorf("walk %q: %s", name, e)
			}
			e = rc.fail(&plan9.Fcall{Type: plan9.Tcreate, Tag: 1, Fid: 1, Name: name, Perm: 0o644, Mode: plan9.OWRITE})
			if !strings.Contains(e, "invalid") && !strings.Contains(e, "too long") {
				t.Errorf("create %q: %s", name, e)
			}
		}
		rc.ok(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 0, Newfid: 5, Wname: []string{"file"}})
		for _, name := range []string{"../outside/secret", "../x", "/tmp/x", "..", "."} {
			var d plan9.Dir
			d.Null()
			d.Name = name
			b, _ := d.Bytes()
			if e := rc.fail(&plan9.Fcall{Type: plan9.Twstat, Tag: 1, Fid: 5, Stat: b}); !strings.Contains(e, "invalid") {
				t.Errorf("rename to %q: %s", name, e)
			}
		}
		for _, aname := range []string{"..", "../outside", "/../outside", "a/../../outside"} {
			if e := rc.fail(&plan9.Fcall{Type: plan9.Tattach, Tag: 1, Fid: 9, Afid: plan9.NOFID, Aname: aname}); e == "" {
				t.Errorf("attach %q succeeded", aname)
			}
		}
	})

	t.Run("malformed frames", func(t *testing.T) {
		rc := plan9DialAttach(t, addr)
		rc.ok(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 0, Newfid: 1, Wname: []string{"file"}})
		rc.ok(&plan9.Fcall{Type: plan9.Topen, Tag: 1, Fid: 1, Mode: plan9.ORDWR})
		fid1, off := plan9U32(1), plan9U64(0)
		for _, tc := range []struct {
			name  string
			frame []byte
			want  string
		}{
			{"Twrite claiming more than it carries", plan9Frame(plan9.Twrite, 2, fid1, off, plan9U32(1000), []byte("0123456789")), "count says 1000 bytes of data, the frame carries 10"},
			{"Twrite claiming 4 GiB", plan9Frame(plan9.Twrite, 2, fid1, off, plan9U32(^uint32(0)), []byte("x")), "count says 4294967295"},
			{"Twrite claiming less than it carries", plan9Frame(plan9.Twrite, 2, fid1, off, plan9U32(1), []byte("0123456789")), "count says 1 bytes"},
			{"Twrite without a count", plan9Frame(plan9.Twrite, 2, fid1, off), "count needs 4 bytes"},
			{"Tcreate without mode", plan9Frame(plan9.Tcreate, 2, plan9U32(0), plan9Str("x"), plan9U32(0o644)), "perm and mode needs 5 bytes"},
			{"Tattach with a long uname length", plan9Frame(plan9.Tattach, 2, plan9U32(7), plan9U32(plan9.NOFID), plan9U16(60000), []byte("abc")), "uname needs 60000 bytes"},
			{"Tattach without aname", plan9Frame(plan9.Tattach, 2, plan9U32(7), plan9U32(plan9.NOFID), plan9Str("u")), "aname length needs 2 bytes"},
			{"Twalk with 17 names", plan9WalkFrame(2, 0, 3, slices.Repeat([]string{"a"}, 17)), "at most 16"},
			{"Twalk claiming 65535 names", plan9Frame(plan9.Twalk, 2, plan9U32(0), plan9U32(3), plan9U16(65535)), "at most 16"},
			{"Twalk claiming 3 names, carrying 1", plan9Frame(plan9.Twalk, 2, plan9U32(0), plan9U32(3), plan9U16(3), plan9Str("file")), "wname[1] length needs 2 bytes"},
			{"Twalk with a name past the end", plan9Frame(plan9.Twalk, 2, plan9U32(0), plan9U32(3), plan9U16(1), plan9U16(500), []byte("ab")), "wname[0] needs 500 bytes"},
			{"Twstat with a short stat", plan9Frame(plan9.Twstat, 2, fid1, plan9U16(10), make([]byte, 10)), "stat size 0 disagrees"},
			{"Twstat with a stat length past the end", plan9Frame(plan9.Twstat, 2, fid1, plan9U16(3000), make([]byte, 10)), "stat length says 3000 bytes"},
			{"Twstat with strings past the stat", plan9Frame(plan9.Twstat, 2, fid1, plan9U16(49), plan9U16(47), make([]byte, 39), plan9U16(100), make([]byte, 6)), "name needs 100 bytes"},
			{"Topen without mode", plan9Frame(plan9.Topen, 2, fid1), "fid and mode needs 5 bytes"},
			{"Tread short", plan9Frame(plan9.Tread, 2, fid1, off), "fid, offset and count needs 16 bytes"},
			{"Tclunk with trailing bytes", plan9Frame(plan9.Tclunk, 2, fid1, []byte("junk")), "4 bytes after the last field"},
			{"Tflush empty", plan9Frame(plan9.Tflush, 2), "oldtag needs 2 bytes"},
			{"Tversion empty", plan9Frame(plan9.Tversion, 2), "msize needs 4 bytes"},
			{"an R-message", plan9Frame(plan9.Rread, 2, plan9U32(0)), "Rread is not a request"},
			{"Terror", plan9Frame(plan9.Terror, 2), "Terror is not a request"},
			{"type 0", plan9Frame(0, 2), "unknown message type"},
			{"type 255", plan9Frame(255, 2, []byte("zzzz")), "unknown message type"},
			{"header only", plan9Frame(plan9.Tstat, 2), "fid needs 4 bytes"},
		} {
			rc.sendRaw(tc.frame)
			rx := rc.recv()
			if rx.Type != plan9.Rerror || rx.Tag != 2 || !strings.Contains(rx.Ename, tc.want) {
				t.Errorf("%s: %v, want Rerror saying %q", tc.name, rx, tc.want)
			}
			// Still in step, and the fid is untouched.
			if rx := rc.ok(&plan9.Fcall{Type: plan9.Tread, Tag: 3, Fid: 1, Count: 100}); string(rx.Data) != "0123456789" {
				t.Fatalf("after %s: read %q", tc.name, rx.Data)
			}
		}
	})

	// Framing lost: the connection is closed, the server lives.
	for _, tc := range []struct {
		name  string
		bytes []byte
	}{
		{"frame larger than msize", append(plan9U32(8193), plan9.Twrite, 1, 0)},
		{"frame of 4 GiB", append(plan9U32(^uint32(0)), plan9.Twrite, 1, 0)},
		{"size 0", plan9U32(0)},
		{"size 4", append(plan9U32(4), 1, 2, 3)},
		{"size 6", append(plan9U32(6), plan9.Tclunk, 1)},
		{"truncated frame", append(plan9U32(100), plan9.Twrite, 1, 0, 1, 2, 3)},
		{"truncated size", []byte{50, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc := plan9DialAttach(t, addr)
			rc.sendRaw(tc.bytes)
			if strings.HasPrefix(tc.name, "truncated") {
				rc.c.(*net.TCPConn).CloseWrite()
			}
			if !rc.closed(5 * time.Second) {
				t.Error("the connection stays open")
			}
		})
	}

	t.Run("random garbage", func(t *testing.T) {
		r := rand.New(rand.NewPCG(1, 2))
		for i := range 100 {
			rc := plan9DialAttach(t, addr)
			junk := make([]byte, r.IntN(3000))
			for j := range junk {
				junk[j] = byte(r.Uint32())
			}
			if i%2 == 0 && len(junk) >= 7 {
				// A plausible size, so the garbage reaches the guard.
				binary.LittleEndian.PutUint32(junk, uint32(len(junk)))
				junk[4] = byte(plan9.Tattach + r.IntN(plan9.Twstat-plan9.Tattach+1))
			}
			rc.sendRaw(junk)
			rc.c.(*net.TCPConn).CloseWrite()
			rc.closed(2 * time.Second)
			rc.c.Close()
		}
	})

	t.Run("random frames", func(t *testing.T) {
		// Well-framed requests with random bodies, on one connection: each
		// gets a reply, and the connection stays in step.
		r := rand.New(rand.NewPCG(3, 4))
		rc := plan9DialAttach(t, addr)
		types := []uint8{plan9.Tauth, plan9.Tattach, plan9.Tflush, plan9.Twalk, plan9.Topen, plan9.Tcreate,
			plan9.Tread, plan9.Twrite, plan9.Tclunk, plan9.Tremove, plan9.Tstat, plan9.Twstat}
		refused, answered := 0, 0
		for i := range 3000 {
			body := make([]byte, r.IntN(80))
			for j := range body {
				body[j] = byte(r.Uint32())
			}
			// Fids 0..3 and small lengths now and then, to get past the guard.
			if len(body) >= 4 && r.IntN(2) == 0 {
				copy(body, plan9U32(uint32(r.IntN(4))))
			}
			typ := types[r.IntN(len(types))]
			tag := uint16(i % 1000)
			if typ == plan9.Tflush && len(body) >= 2 {
				copy(body, plan9U16(tag+1)) // flush nothing real
			}
			if i%2 == 0 {
				rc.sendRaw(plan9Frame(typ, tag, body))
			} else {
				rc.send(plan9RandomFcall(r, typ, tag))
			}
			rx := rc.recv()
			if rx.Tag != tag {
				t.Fatalf("frame %d: reply %v for tag %d", i, rx, tag)
			}
			if rx.Type == plan9.Rerror && strings.HasPrefix(rx.Ename, "malformed") {
				refused++
			} else {
				answered++
			}
		}
		t.Logf("%d frames refused by the guard, %d went to the tree", refused, answered)
	})

	// A new connection still works, and nothing outside the tree changed.
	rc := plan9DialAttach(t, addr)
	rc.ok(&plan9.Fcall{Type: plan9.Tstat, Tag: 1, Fid: 0})
	if after := plan9Snapshot(t, outside); !maps.Equal(before, after) {
		t.Errorf("outside the tree: before %v, after %v", before, after)
	}
	entries, _ := os.ReadDir(base)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if got := strings.Join(names, ","); got != "outside,tree" {
		t.Errorf("beside the tree: %s", got)
	}
	if b, _ := os.ReadFile(filepath.Join(outside, "secret")); !bytes.Equal(b, []byte("do not touch")) {
		t.Errorf("secret: %q", b)
	}
}

// plan9RandomFcall is a well-formed request with random fields.
func plan9RandomFcall(r *rand.Rand, typ uint8, tag uint16) *plan9.Fcall {
	names := []string{"file", "x", "..", "", "/", ".", "a\x00", "new", "tree", "outside", "../outside"}
	name := func() string { return names[r.IntN(len(names))] }
	f := &plan9.Fcall{Type: typ, Tag: tag, Fid: uint32(r.IntN(6)), Newfid: uint32(r.IntN(6)),
		Afid: plan9.NOFID, Uname: name(), Aname: name(), Name: name(),
		Mode: uint8(r.Uint32()), Perm: plan9.Perm(r.Uint32() & (plan9.DMDIR | plan9.DMAPPEND | 0o777)),
		Offset: uint64(r.IntN(100)), Count: uint32(r.IntN(9000)), Oldtag: tag + 1}
	if typ == plan9.Twrite {
		f.Data = make([]byte, r.IntN(100))
	}
	for range r.IntN(4) {
		f.Wname = append(f.Wname, name())
	}
	if typ == plan9.Twstat {
		var d plan9.Dir
		d.Null()
		switch r.IntN(4) {
		case 0:
			d.Name = name()
		case 1:
			d.Length = uint64(r.IntN(20))
		case 2:
			d.Mode = plan9.Perm(r.Uint32())
		}
		f.Stat, _ = d.Bytes()
	}
	return f
}
