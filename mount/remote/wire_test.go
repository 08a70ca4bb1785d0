package remote

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
)

// recConn is a connection that keeps each Write as it came.
type recConn struct {
	net.Conn
	writes [][]byte
}

func (c *recConn) Write(p []byte) (int, error) {
	c.writes = append(c.writes, bytes.Clone(p))
	return len(p), nil
}

func tframe(typ byte, tag uint16, n int) []byte {
	b := make([]byte, 7+n)
	binary.LittleEndian.PutUint32(b, uint32(len(b)))
	b[4] = typ
	binary.LittleEndian.PutUint16(b[5:], tag)
	for i := 7; i < len(b); i++ {
		b[i] = byte(i)
	}
	return b
}

// TestWireFrames: whatever the pieces p9 writes a request in, the bytes
// go out intact, a small request in one write, a large payload from
// where it is.
func TestWireFrames(t *testing.T) {
	cases := []struct {
		name   string
		frame  []byte
		cuts   []int // where p9's writes end
		writes int   // writes expected on a connection without writev
	}{
		{"header and fixed part", tframe(110, 1, 4+2+2+5), []int{7}, 1},
		{"header, fixed part, small payload", tframe(118, 2, 4+8+4+10), []int{7, 23}, 1},
		{"header alone", tframe(120, 3, 0), nil, 1},
		{"byte by byte", tframe(24, 4, 12), []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18}, 1},
		{"payload at the gather limit", tframe(118, 5, 16+wireGather), []int{7, 23}, 1},
		{"large payload", tframe(118, 6, 16+wireGather+1), []int{7, 23}, 2},
		{"large payload in pieces", tframe(118, 7, 16+3*wireGather), []int{7, 23, 23 + wireGather + 1, 23 + wireGather + 5}, 4},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conn := &recConn{}
			w := newWire(conn)
			for _, frame := range [][]byte{c.frame, c.frame} {
				prev := 0
				for _, cut := range append(c.cuts, len(frame)) {
					if n, err := w.Write(frame[prev:cut]); n != cut-prev || err != nil {
						t.Fatalf("Write: %d, %v", n, err)
					}
					prev = cut
				}
			}
			if got := bytes.Join(conn.writes, nil); !bytes.Equal(got, append(bytes.Clone(c.frame), c.frame...)) {
				t.Fatalf("wrote %d bytes, not the two frames", len(got))
			}
			if len(conn.writes) != 2*c.writes {
				t.Errorf("%d writes for two frames, want %d", len(conn.writes), 2*c.writes)
			}
		})
	}
}

// TestWireBadFrame: a frame shorter than a header is refused.
func TestWireBadFrame(t *testing.T) {
	w := newWire(&recConn{})
	if _, err := w.Write([]byte{3, 0, 0, 0, 1, 2, 3}); err == nil {
		t.Fatal("a 3-byte frame was accepted")
	}
	// The next frame starts afresh.
	f := tframe(120, 1, 4)
	if n, err := w.Write(f); n != len(f) || err != nil {
		t.Fatalf("Write after a refused frame: %d, %v", n, err)
	}
}
