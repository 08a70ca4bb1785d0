package remote

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"net"
)

// wire is the connection as p9's client sees it. p9 reads a message as a
// header, then a body, and writes one as two or three parts (header,
// fixed part, payload), each a call of its own; on the bare connection
// that is two system calls per answer and, unless the connection gathers
// writes itself, a packet (or, through an encrypted link, a sealed
// record) per part of a request. So reads come from a buffer, and writes
// follow frame boundaries: the parts of a frame are gathered and sent with
// the one that completes it, in a single write.
type wire struct {
	conn net.Conn
	r    *bufio.Reader

	// Used only by p9's send, which p9 serializes.
	buf []byte // the current frame so far: its size first, once known
	rem int    // bytes of the current frame not yet given; 0 between frames
}

const (
	// wireReadBuffer is the read buffer: many answers at once. A
	// larger read (a big Rread's payload) bypasses it.
	wireReadBuffer = 64 << 10
	// wireGather is the largest part that is copied to go out with the
	// rest of its frame; a larger one is written from where it is.
	wireGather = 16 << 10
	// wireKeep is the largest gather buffer kept between frames.
	wireKeep = 64 << 10
)

func newWire(conn net.Conn) *wire {
	return &wire{conn: conn, r: bufio.NewReaderSize(conn, wireReadBuffer), buf: make([]byte, 0, 512)}
}

// Read implements io.Reader for p9's recv.
func (w *wire) Read(p []byte) (int, error) { return w.r.Read(p) }

// Close implements io.Closer.
func (w *wire) Close() error { return w.conn.Close() }

// Write implements io.Writer for p9's send. It returns once the part is
// gathered or, if it completes its frame, once the frame is written.
func (w *wire) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		if w.rem == 0 {
			// A frame begins: learn its size from its first four bytes.
			need := 4 - len(w.buf)
			if len(p) < need {
				w.buf = append(w.buf, p...)
				return total, nil
			}
			w.buf = append(w.buf, p[:need]...)
			p = p[need:]
			size := int(binary.LittleEndian.Uint32(w.buf))
			if size < 7 {
				w.reset()
				return 0, fmt.Errorf("p9 wrote a frame of %d bytes", size)
			}
			w.rem = size - 4
			continue
		}
		n := min(len(p), w.rem)
		part := p[:n]
		p = p[n:]
		w.rem -= n
		if w.rem > 0 && n <= wireGather {
			w.buf = append(w.buf, part...)
			continue
		}
		if err := w.flush(part); err != nil {
			w.reset()
			return total - len(p) - n, err
		}
	}
	return total, nil
}

// flush writes what is gathered and part, in one write when that is
// cheap. A frame whose end is still to come keeps its place: rem says how
// much of it is left, and buf starts empty for the rest.
func (w *wire) flush(part []byte) error {
	var err error
	switch {
	case len(part) <= wireGather:
		w.buf = append(w.buf, part...)
		_, err = w.conn.Write(w.buf)
	case len(w.buf) == 0:
		_, err = w.conn.Write(part)
	default:
		// One writev on a TCP connection; two writes on anything else.
		bufs := net.Buffers{w.buf, part}
		_, err = bufs.WriteTo(w.conn)
	}
	w.buf = w.buf[:0]
	if cap(w.buf) > wireKeep {
		w.buf = make([]byte, 0, 512)
	}
	return err
}

// reset forgets the frame in progress after a failed write: the link is
// broken and ends with the error.
func (w *wire) reset() {
	w.rem = 0
	w.buf = w.buf[:0]
}
