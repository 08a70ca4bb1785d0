package ninep

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// recorder keeps each Write as it came.
type recorder struct{ writes [][]byte }

func (r *recorder) Write(p []byte) (int, error) {
	r.writes = append(r.writes, bytes.Clone(p))
	return len(p), nil
}

// rframe is a reply frame of type typ whose body is n bytes.
func rframe(typ byte, tag uint16, n int) []byte {
	b := make([]byte, lhdrLen+n)
	binary.LittleEndian.PutUint32(b, uint32(len(b)))
	b[4] = typ
	binary.LittleEndian.PutUint16(b[5:], tag)
	for i := lhdrLen; i < len(b); i++ {
		b[i] = byte(i)
	}
	return b
}

// TestLWriterFrames: whatever the pieces p9 writes a reply in, the bytes
// go out intact and each reply counts as answered once; a small reply
// goes out in one write, a large one without copying its payload.
func TestLWriterFrames(t *testing.T) {
	cases := []struct {
		name   string
		frame  []byte
		cuts   []int // where p9's writes end
		writes int   // writes expected on the connection
	}{
		{"header and fixed part", rframe(25, 1, 153), []int{7}, 1},
		{"header, fixed part, small payload", rframe(117, 2, 4+10), []int{7, 11}, 1},
		{"header alone", rframe(121, 3, 0), nil, 1},
		{"byte by byte", rframe(25, 4, 40), seq(1, 47), 1},
		{"payload at the gather limit", rframe(117, 5, 4+lgatherLimit), []int{7, 11}, 1},
		{"large payload", rframe(117, 6, 4+lgatherLimit+1), []int{7, 11}, 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var rec recorder
			w := newLWriter(&rec, 10)
			w.outstanding = 2
			for _, frame := range [][]byte{c.frame, c.frame} {
				prev := 0
				for _, cut := range append(c.cuts, len(frame)) {
					if n, err := w.Write(frame[prev:cut]); n != cut-prev || err != nil {
						t.Fatalf("Write: %d, %v", n, err)
					}
					prev = cut
				}
			}
			if got := bytes.Join(rec.writes, nil); !bytes.Equal(got, append(bytes.Clone(c.frame), c.frame...)) {
				t.Fatalf("wrote %d bytes, not the two frames", len(got))
			}
			if len(rec.writes) != 2*c.writes {
				t.Errorf("%d writes for two frames, want %d", len(rec.writes), 2*c.writes)
			}
			if w.outstanding != 0 {
				t.Errorf("%d replies still outstanding", w.outstanding)
			}
		})
	}
}

func seq(from, to int) []int {
	var s []int
	for i := from; i < to; i++ {
		s = append(s, i)
	}
	return s
}
