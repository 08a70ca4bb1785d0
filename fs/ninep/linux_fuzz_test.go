package ninep

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"log/slog"
	"testing"
)

func lframe(typ byte, tag uint16, body []byte) []byte {
	b := make([]byte, lhdrLen, lhdrLen+len(body))
	binary.LittleEndian.PutUint32(b, uint32(lhdrLen+len(body)))
	b[4] = typ
	binary.LittleEndian.PutUint16(b[5:], tag)
	return append(b, body...)
}

// lmodel walks data the way the 9P2000.L frame reader must: it returns the
// bytes of the frames p9 is given and the tags of the Tauth frames answered.
func lmodel(data []byte, msize uint32) (passed []byte, auths []uint16) {
	for pos := 0; pos+lhdrLen <= len(data); {
		size := binary.LittleEndian.Uint32(data[pos:])
		typ := data[pos+4]
		if size < lhdrLen || size > msize {
			return
		}
		if uint64(pos)+uint64(size) > uint64(len(data)) {
			if typ != lmsgTauth {
				passed = append(passed, data[pos:]...) // p9 gets what arrived
			}
			return
		}
		switch typ {
		case lmsgTauth:
			auths = append(auths, binary.LittleEndian.Uint16(data[pos+5:]))
		case msgTversion:
			if pos+lhdrLen+4 <= len(data) {
				msize = min(max(binary.LittleEndian.Uint32(data[pos+lhdrLen:]), MinMsize), MaxMsizeL)
			}
			fallthrough
		default:
			passed = append(passed, data[pos:pos+int(size)]...)
		}
		pos += int(size)
	}
	return
}

// FuzzLinuxFrames feeds arbitrary bytes, as the stream after the Tversion,
// through the 9P2000.L frame reader. It never panics or hangs; it hands p9
// exactly the frames within bounds, byte for byte, never a Tauth; it
// answers every whole Tauth with Rlerror ENOENT and its tag; it stops at
// the first frame out of bounds.
func FuzzLinuxFrames(f *testing.F) {
	attach := lframe(104, 1, make([]byte, 4+4+2+2+4))
	f.Add(uint16(0), append(lframe(lmsgTauth, 3, make([]byte, 4+2+2+4)), attach...))
	f.Add(uint16(7000), append(attach, lframe(116, 2, make([]byte, 4+8+4))...))
	f.Add(uint16(0), append(attach, 0xff, 0xff, 0xff, 0xff, 116, 0, 0))
	f.Add(uint16(0), append(lframe(msgTversion, 0xffff, []byte{0xff, 0xff, 0xff, 0xff, 8, 0}), []byte("9P2000.L")...))
	f.Add(uint16(100), []byte{3, 0, 0, 0, 116, 1, 0})
	f.Add(uint16(1), lframe(lmsgTauth, 9, nil)[:5])
	log := slog.New(slog.DiscardHandler)
	f.Fuzz(func(t *testing.T, msizeSel uint16, data []byte) {
		msize := MinMsize + uint32(msizeSel)
		var out bytes.Buffer
		w := newLWriter(&out, 1<<20)
		r := newLReader(nil, bufio.NewReader(bytes.NewReader(data)), w, msize, log, frameClock{}, func(error) {})
		var got []byte
		for {
			hdr := make([]byte, lhdrLen)
			n, err := io.ReadFull(r, hdr)
			got = append(got, hdr[:n]...)
			if err != nil {
				break
			}
			if hdr[4] == lmsgTauth {
				t.Fatalf("a Tauth frame reached p9")
			}
			body := make([]byte, binary.LittleEndian.Uint32(hdr)-lhdrLen)
			n, err = io.ReadFull(r, body)
			got = append(got, body[:n]...)
			if err != nil {
				break
			}
			w.answered()
		}
		want, auths := lmodel(data, msize)
		if !bytes.Equal(got, want) {
			t.Fatalf("p9 was given %d bytes, want %d:\n got %x\nwant %x", len(got), len(want), got, want)
		}
		var wantOut []byte
		for _, tag := range auths {
			wantOut = append(wantOut, rlerror(tag, lENOENT)...)
		}
		if !bytes.Equal(out.Bytes(), wantOut) {
			t.Fatalf("answers %x, want Rlerror ENOENT for tags %v", out.Bytes(), auths)
		}
	})
}
