package ninep

import (
	"bytes"
	"errors"
	"reflect"
	"testing"

	"github.com/knusbaum/go9p/proto"
)

// plan9SeedFrames is one valid frame of every T-message, and a few that
// stand at the limits.
func plan9SeedFrames() [][]byte {
	h := func(t uint8) proto.Header { return proto.Header{Type: t, Tag: 7} }
	stat := proto.Stat{Type: 0xffff, Dev: 0xffffffff, Qid: proto.Qid{Qtype: 0xff, Vers: 0xffffffff, Uid: ^uint64(0)},
		Mode: 0o644, Atime: 0xffffffff, Mtime: 1_700_000_000, Length: 42, Name: "renamed", Uid: "", Gid: "", Muid: ""}
	msgs := []proto.FCall{
		&proto.TRVersion{Header: proto.Header{Type: proto.Tversion, Tag: 0xffff}, Msize: 8192, Version: "9P2000"},
		&proto.TAuth{Header: h(proto.Tauth), Afid: 1, Uname: "glenda", Aname: ""},
		&proto.TAttach{Header: h(proto.Tattach), Fid: 0, Afid: 0xffffffff, Uname: "glenda", Aname: "/sub"},
		&proto.TFlush{Header: h(proto.Tflush), Oldtag: 3},
		&proto.TWalk{Header: h(proto.Twalk), Fid: 0, Newfid: 1, Nwname: 3, Wname: []string{"a", "..", "b"}},
		&proto.TWalk{Header: h(proto.Twalk), Fid: 0, Newfid: 1, Nwname: 16, Wname: []string{"1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16"}},
		&proto.TWalk{Header: h(proto.Twalk), Fid: 0, Newfid: 0, Nwname: 0, Wname: []string{}},
		&proto.TOpen{Header: h(proto.Topen), Fid: 1, Mode: proto.Ordwr | proto.Otrunc},
		&proto.TCreate{Header: h(proto.Tcreate), Fid: 1, Name: "new", Perm: proto.DMDIR | 0o755, Mode: 0},
		&proto.TRead{Header: h(proto.Tread), Fid: 1, Offset: 1 << 40, Count: 65535},
		&proto.TWrite{Header: h(proto.Twrite), Fid: 1, Offset: 3, Count: 5, Data: []byte("hello")},
		&proto.TWrite{Header: h(proto.Twrite), Fid: 1, Offset: 0, Count: 0, Data: []byte{}},
		&proto.TClunk{Header: h(proto.Tclunk), Fid: 1},
		&proto.TRemove{Header: h(proto.Tremove), Fid: 1},
		&proto.TStat{Header: h(proto.Tstat), Fid: 1},
		&proto.TWstat{Header: h(proto.Twstat), Fid: 1, Stat: stat},
	}
	var out [][]byte
	for _, m := range msgs {
		out = append(out, m.Compose())
	}
	// Two frames back to back, and hostile ones the guard must refuse.
	out = append(out, append(msgs[12].Compose(), msgs[14].Compose()...))
	out = append(out, []byte{17, 0, 0, 0, proto.Twrite, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0})
	out = append(out, []byte{3, 0, 0, 0, proto.Tclunk, 1, 0})
	out = append(out, []byte{14, 0, 0, 0, proto.Tcreate, 1, 0, 1, 0, 0, 0, 1, 0, 'x'})
	return out
}

// FuzzPlan9Frame feeds arbitrary bytes through the frame reader, the
// guard and the go9p codec. Nothing may panic; a frame the guard accepts
// must parse, and composing what was parsed must give back the same bytes,
// which parse to the same message.
func FuzzPlan9Frame(f *testing.F) {
	for _, seed := range plan9SeedFrames() {
		f.Add(seed)
	}
	buf := make([]byte, MaxMsize9P)
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		for range 16 {
			frame, err := plan9ReadFrame(r, buf, MaxMsize9P)
			if err != nil {
				var fe *plan9FrameError
				if r.Len() > 0 && !errors.As(err, &fe) {
					t.Fatalf("read error %v with %d bytes left", err, r.Len())
				}
				return
			}
			if err := plan9Check(frame); err != nil {
				var me *plan9MsgError
				if !errors.As(err, &me) {
					t.Fatalf("guard error of type %T: %v", err, err)
				}
				continue
			}
			fc, err := plan9Parse(frame)
			if err != nil {
				t.Fatalf("the guard accepted % x, the codec says %v", frame, err)
			}
			again := fc.Compose()
			if !bytes.Equal(again, frame) {
				t.Fatalf("%s composes to\n% x\nnot\n% x", fc, again, frame)
			}
			fc2, err := plan9Parse(again)
			if err != nil {
				t.Fatalf("composed %s does not parse: %v", fc, err)
			}
			if !reflect.DeepEqual(fc, fc2) {
				t.Fatalf("%s parses back as %s", fc, fc2)
			}
		}
	})
}
