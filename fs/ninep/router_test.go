package ninep

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

func tversionFrame(tag uint16, msize uint32, version string) []byte {
	b := rversion(tag, msize, version)
	b[4] = msgTversion
	return b
}

func TestReadTversion(t *testing.T) {
	for _, tc := range []struct {
		name      string
		in        []byte
		version   string // "" = refused
		msize     uint32
		replyType byte
		replyText string
	}{
		{"9P2000.L", tversionFrame(0xffff, 1<<20, "9P2000.L"), "9P2000.L", 1 << 20, 0, ""},
		{"9P2000", tversionFrame(0xffff, 8192+24, "9P2000"), "9P2000", 8192 + 24, 0, ""},
		{"p9's versioned 9P2000.L", tversionFrame(1, 1<<20, "9P2000.L.Google.7"), "9P2000.L", 1 << 20, 0, ""},
		{"9P2000.u answered as 9P2000", tversionFrame(1, 8192, "9P2000.u"), "9P2000", 8192, 0, ""},
		{"L clamps msize", tversionFrame(1, 1<<31, "9P2000.L"), "9P2000.L", MaxMsizeL, 0, ""},
		{"9P2000 msize 2^32-1 clamps", tversionFrame(1, 1<<32-1, "9P2000"), "9P2000", MaxMsize9P, 0, ""},
		{"msize 0", tversionFrame(1, 0, "9P2000"), "", 0, msgRerror, "msize 0 is below the minimum"},
		{"msize 7", tversionFrame(1, 7, "9P2000"), "", 0, msgRerror, "msize 7 is below the minimum"},
		{"msize 7 .L", tversionFrame(1, 7, "9P2000.L"), "", 0, msgRlerror, ""},
		{"unknown version", tversionFrame(1, 8192, "9P1999"), "", 0, msgRversion, "unknown"},
		{"not a Tversion", append([]byte{11, 0, 0, 0, 104, 1, 0}, 0, 0, 0, 0), "", 0, msgRversion, "unknown"},
		{"huge frame", append([]byte{0xff, 0xff, 0xff, 0x7f, msgTversion, 1, 0}, make([]byte, 16)...), "", 0, msgRversion, "unknown"},
		{"bad string length", []byte{15, 0, 0, 0, msgTversion, 1, 0, 0, 32, 0, 0, 200, 0, 'x', 'y'}, "", 0, msgRversion, "unknown"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tv, err := readTversion(bufio.NewReader(bytes.NewReader(tc.in)))
			if tc.version != "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if tv.version != tc.version || tv.msize != tc.msize {
					t.Fatalf("got %q msize %d, want %q msize %d", tv.version, tv.msize, tc.version, tc.msize)
				}
				return
			}
			var re *refusal
			if !errors.As(err, &re) {
				t.Fatalf("err = %v, want a refusal", err)
			}
			checkFrame(t, re.reply)
			if re.reply[4] != tc.replyType {
				t.Errorf("reply type %d, want %d", re.reply[4], tc.replyType)
			}
			if tc.replyText != "" && !bytes.Contains(re.reply, []byte(tc.replyText)) {
				t.Errorf("reply %q does not say %q", re.reply, tc.replyText)
			}
		})
	}
}

func checkFrame(t testing.TB, b []byte) {
	t.Helper()
	if len(b) < 7 || binary.LittleEndian.Uint32(b) != uint32(len(b)) {
		t.Fatalf("malformed reply frame %x", b)
	}
}

// FuzzTversion feeds arbitrary first frames to the router's decoder: it
// never panics, never accepts a dialect it does not serve or an msize out of
// range, and every refusal is a well-formed frame.
func FuzzTversion(f *testing.F) {
	f.Add(tversionFrame(0xffff, 8192, "9P2000"))
	f.Add(tversionFrame(0xffff, 1<<22, "9P2000.L"))
	f.Add(tversionFrame(1, 7, "9P2000.u"))
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{13, 0, 0, 0, msgTversion, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		tv, err := readTversion(bufio.NewReader(bytes.NewReader(data)))
		if err == nil {
			if tv.version != "9P2000" && tv.version != "9P2000.L" {
				t.Fatalf("accepted version %q", tv.version)
			}
			if tv.msize < MinMsize || tv.msize > MaxMsizeL || tv.version == "9P2000" && tv.msize > MaxMsize9P {
				t.Fatalf("msize %d out of range for %s", tv.msize, tv.version)
			}
			return
		}
		var re *refusal
		if errors.As(err, &re) {
			checkFrame(t, re.reply)
		}
	})
}
