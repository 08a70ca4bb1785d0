package ninep

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/knusbaum/go9p/proto"
)

// The guard in front of the go9p codec. proto.ParseCall trusts what a frame
// claims: a size below 4 underflows, a Twrite count beyond the frame slices
// out of range, a string length past the end yields silently wrong fields.
// So every frame is read here with a bound on its size and its layout is
// checked field by field before the codec sees it; only frames whose every
// length agrees with the bytes actually carried are parsed.

const (
	plan9HdrSize   = 4 + 1 + 2 // size[4] type[1] tag[2]
	plan9MaxWelem  = 16        // MAXWELEM: names in one Twalk
	plan9StatFixed = 2 + 2 + 4 + 13 + 4 + 4 + 4 + 8
	plan9QidSize   = 13
)

// plan9FrameError means the byte stream cannot be split into frames any
// more: the connection must be closed.
type plan9FrameError struct{ why string }

func (e *plan9FrameError) Error() string { return "ninep: 9P2000 framing lost: " + e.why }

// plan9MsgError means one frame is malformed; the stream is still in step,
// so the frame is answered with an Rerror carrying Error().
type plan9MsgError struct {
	typ uint8
	why string
}

func (e *plan9MsgError) Error() string {
	return fmt.Sprintf("malformed %s: %s", plan9TypeName(e.typ), e.why)
}

// plan9ReadFrame reads one whole frame into buf, which must hold at least
// msize bytes, and returns it (size field included). It allocates nothing:
// a claimed size below the header or above msize is refused before any of
// the body is read. At a clean frame boundary the error is io.EOF.
func plan9ReadFrame(r io.Reader, buf []byte, msize uint32) ([]byte, error) {
	if _, err := io.ReadFull(r, buf[:4]); err != nil {
		if err == io.ErrUnexpectedEOF {
			return nil, &plan9FrameError{"truncated size field"}
		}
		return nil, err
	}
	size := binary.LittleEndian.Uint32(buf[:4])
	switch {
	case size < plan9HdrSize:
		return nil, &plan9FrameError{fmt.Sprintf("frame of %d bytes is shorter than a header", size)}
	case size > msize || int64(size) > int64(len(buf)):
		return nil, &plan9FrameError{fmt.Sprintf("frame of %d bytes exceeds msize %d", size, msize)}
	}
	if _, err := io.ReadFull(r, buf[4:size]); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil, &plan9FrameError{fmt.Sprintf("frame of %d bytes truncated", size)}
		}
		return nil, err
	}
	return buf[:size], nil
}

// plan9Cursor walks the fields of a frame, remembering the first overrun.
type plan9Cursor struct {
	b   []byte
	err string
}

func (c *plan9Cursor) take(n int, what string) []byte {
	if c.err != "" {
		return nil
	}
	if n < 0 || n > len(c.b) {
		c.err = fmt.Sprintf("%s needs %d bytes, %d left", what, n, len(c.b))
		return nil
	}
	p := c.b[:n]
	c.b = c.b[n:]
	return p
}

func (c *plan9Cursor) u16(what string) uint16 {
	if p := c.take(2, what); p != nil {
		return binary.LittleEndian.Uint16(p)
	}
	return 0
}

func (c *plan9Cursor) u32(what string) uint32 {
	if p := c.take(4, what); p != nil {
		return binary.LittleEndian.Uint32(p)
	}
	return 0
}

// str checks a string field: a 2-byte length and that many bytes.
func (c *plan9Cursor) str(what string) {
	n := c.u16(what + " length")
	if c.err == "" {
		c.take(int(n), what)
	}
}

// plan9Check checks that frame (as returned by plan9ReadFrame) is a
// T-message whose fields all lie within it, with nothing left over.
func plan9Check(frame []byte) error {
	typ := frame[4]
	c := &plan9Cursor{b: frame[plan9HdrSize:]}
	bad := func(format string, args ...any) error {
		return &plan9MsgError{typ: typ, why: fmt.Sprintf(format, args...)}
	}
	switch typ {
	case proto.Tversion:
		c.take(4, "msize")
		c.str("version")
	case proto.Tauth:
		c.take(4, "afid")
		c.str("uname")
		c.str("aname")
	case proto.Tattach:
		c.take(8, "fid and afid")
		c.str("uname")
		c.str("aname")
	case proto.Tflush:
		c.take(2, "oldtag")
	case proto.Twalk:
		c.take(8, "fid and newfid")
		n := c.u16("nwname")
		if c.err == "" && n > plan9MaxWelem {
			return bad("%d names in one walk; at most %d are allowed", n, plan9MaxWelem)
		}
		for i := 0; i < int(n) && c.err == ""; i++ {
			c.str(fmt.Sprintf("wname[%d]", i))
		}
	case proto.Topen:
		c.take(4+1, "fid and mode")
	case proto.Tcreate:
		c.take(4, "fid")
		c.str("name")
		c.take(4+1, "perm and mode")
	case proto.Tread:
		c.take(4+8+4, "fid, offset and count")
	case proto.Twrite:
		c.take(4+8, "fid and offset")
		n := c.u32("count")
		if c.err == "" && int64(n) != int64(len(c.b)) {
			return bad("count says %d bytes of data, the frame carries %d", n, len(c.b))
		}
		c.take(int(n), "data")
	case proto.Tclunk, proto.Tremove, proto.Tstat:
		c.take(4, "fid")
	case proto.Twstat:
		c.take(4, "fid")
		n := c.u16("stat length")
		if c.err == "" && int(n) != len(c.b) {
			return bad("stat length says %d bytes, the frame carries %d", n, len(c.b))
		}
		size := c.u16("stat size")
		if c.err == "" && int(size)+2 != int(n) {
			return bad("stat size %d disagrees with stat length %d", size, n)
		}
		c.take(plan9StatFixed-2, "stat fixed fields")
		c.str("name")
		c.str("uid")
		c.str("gid")
		c.str("muid")
	default:
		if typ >= proto.Tversion && typ <= proto.Rwstat {
			return bad("a %s is not a request", plan9TypeName(typ))
		}
		return bad("unknown message type")
	}
	if c.err != "" {
		return bad("%s", c.err)
	}
	if len(c.b) != 0 {
		return bad("%d bytes after the last field", len(c.b))
	}
	return nil
}

// plan9Parse decodes a frame that plan9Check accepted. The recover is a
// last line of defence: the guard should leave the codec nothing to trip on.
func plan9Parse(frame []byte) (fc proto.FCall, err error) {
	defer func() {
		if v := recover(); v != nil {
			fc, err = nil, &plan9MsgError{typ: frame[4], why: fmt.Sprintf("codec failed: %v", v)}
		}
	}()
	fc, err = proto.ParseCall(bytes.NewReader(frame))
	if err != nil {
		return nil, &plan9MsgError{typ: frame[4], why: err.Error()}
	}
	return fc, nil
}

var plan9TypeNames = [...]string{
	"Tversion", "Rversion", "Tauth", "Rauth", "Tattach", "Rattach", "Terror", "Rerror",
	"Tflush", "Rflush", "Twalk", "Rwalk", "Topen", "Ropen", "Tcreate", "Rcreate",
	"Tread", "Rread", "Twrite", "Rwrite", "Tclunk", "Rclunk", "Tremove", "Rremove",
	"Tstat", "Rstat", "Twstat", "Rwstat",
}

func plan9TypeName(t uint8) string {
	if i := int(t) - proto.Tversion; i >= 0 && i < len(plan9TypeNames) {
		return plan9TypeNames[i]
	}
	return fmt.Sprintf("message of type %d", t)
}
