package link

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"strata/fs"
)

const (
	sessionIDSize = 32
	// adSize is the associated data of a frame: session ID, direction,
	// sequence number, record type.
	adSize = sessionIDSize + 1 + 8 + 1

	dirClient byte = 'c' // frames the dialer sends
	dirServer byte = 's' // frames the acceptor sends

	// closeTimeout bounds how long Close waits to send the close frame.
	closeTimeout = 2 * time.Second
)

// Conn is an established link: a net.Conn whose bytes are sealed in AEAD
// frames. One goroutine may Read while another Writes; Close may be
// called from any goroutine, any number of times.
//
// Errors are *fs.Error values (Op "link read" or "link write", Path the
// peer's name) except for deadline timeouts, which are the underlying
// connection's error (a net.Error whose Timeout is true, matching
// os.ErrDeadlineExceeded). A Read that times out may be retried. A Write
// that times out after sending part of a frame breaks the link for
// writing, as in crypto/tls; one that sent nothing may be retried.
type Conn struct {
	conn   net.Conn
	sess   *session
	sid    [sessionIDSize]byte
	peer   string
	method Method
	keyID  uint32
	client bool

	rmu     sync.Mutex
	rr      *recordReader
	rseq    uint64
	rad     [adSize]byte
	pending []byte // plaintext of the last frame not yet returned; may alias rr's buffer
	rerr    error  // sticky: io.EOF after the close frame, or the fatal error

	wmu  sync.Mutex
	wseq uint64
	wad  [adSize]byte
	werr error  // sticky
	wbuf []byte // sealed frames on their way out; grows to one batch

	closed atomic.Bool
	fatal  atomic.Pointer[fs.Error] // why the link was torn down, if it was
}

func newConn(conn net.Conn, rr *recordReader, sess *session, sid [sessionIDSize]byte, client bool, peer string, m Method, keyID uint32) *Conn {
	c := &Conn{conn: conn, rr: rr, sess: sess, sid: sid, client: client, peer: peer, method: m, keyID: keyID}
	send, recv := dirServer, dirClient
	if client {
		send, recv = dirClient, dirServer
	}
	copy(c.wad[:], sid[:])
	c.wad[sessionIDSize] = send
	copy(c.rad[:], sid[:])
	c.rad[sessionIDSize] = recv
	return c
}

func setAD(ad *[adSize]byte, seq uint64, typ byte) []byte {
	binary.BigEndian.PutUint64(ad[sessionIDSize+1:], seq)
	ad[adSize-1] = typ
	return ad[:]
}

// Peer is the peer's name as proven by the handshake. On a link whose
// keyset is shared by every peer, the name is only as trustworthy as the
// peers holding the key.
func (c *Conn) Peer() string { return c.peer }

// Method is the link's AEAD method.
func (c *Conn) Method() Method { return c.method }

// SessionID is the hash of both hellos: unique to this session.
func (c *Conn) SessionID() []byte { return append([]byte(nil), c.sid[:]...) }

// KeyID is the ID of the keyset key this session's keys were derived from.
func (c *Conn) KeyID() uint32 { return c.keyID }

// LocalAddr is the underlying connection's local address.
func (c *Conn) LocalAddr() net.Addr { return c.conn.LocalAddr() }

// RemoteAddr is the underlying connection's remote address.
func (c *Conn) RemoteAddr() net.Addr { return c.conn.RemoteAddr() }

// SetDeadline sets the underlying connection's read and write deadlines.
func (c *Conn) SetDeadline(t time.Time) error { return c.conn.SetDeadline(t) }

// SetReadDeadline sets the underlying connection's read deadline.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.conn.SetReadDeadline(t) }

// SetWriteDeadline sets the underlying connection's write deadline.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.conn.SetWriteDeadline(t) }

// Read reads authenticated plaintext. It returns io.EOF only after the
// peer's close frame; every other end of the stream is an error.
func (c *Conn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.rerr == nil && c.closed.Load() {
		c.rerr = &fs.Error{Op: "link read", Path: c.peer, Kind: fs.BadHandle, Err: closedCause(c)}
	}
	if len(c.pending) == 0 && c.rerr != nil {
		return 0, c.rerr
	}
	n := 0
	for n < len(p) {
		if len(c.pending) > 0 {
			k := copy(p[n:], c.pending)
			c.pending = c.pending[k:]
			n += k
			continue
		}
		// Having returned something, decrypt only frames already here.
		if n > 0 && (c.rerr != nil || !c.rr.buffered()) {
			break
		}
		pt, direct, err := c.readFrame(p[n:])
		if err != nil {
			if n > 0 {
				break // the error (sticky, or a timeout) comes with the next call
			}
			return 0, err
		}
		if direct {
			n += len(pt)
		} else {
			c.pending = pt
		}
	}
	return n, nil
}

// readFrame reads and opens the next frame. If its plaintext fits in
// room, it is decrypted there (direct is true); else in the read buffer.
// Called with rmu held.
func (c *Conn) readFrame(room []byte) (pt []byte, direct bool, err error) {
	seq := c.rseq
	typ, body, err := c.rr.next(maxFrameBody)
	if err != nil {
		var tl errRecordTooLong
		switch {
		case isTimeout(err) && !c.closed.Load():
			return nil, false, err // nothing consumed: the caller may retry
		case c.closed.Load():
			return nil, false, c.failRead(fs.BadHandle, closedCause(c))
		case errors.As(err, &tl):
			return nil, false, c.failRead(fs.Invalid, fmt.Errorf("%w: frame %d: %v", ErrProtocol, seq, tl))
		case err == io.EOF:
			return nil, false, c.failRead(fs.Unavailable, fmt.Errorf("%w: connection ended without close frame", ErrTruncated))
		case err == io.ErrUnexpectedEOF:
			return nil, false, c.failRead(fs.Unavailable, fmt.Errorf("%w: connection ended inside frame %d", ErrTruncated, seq))
		default:
			return nil, false, c.failRead(fs.Unavailable, fmt.Errorf("frame %d: %w", seq, err))
		}
	}
	switch typ {
	case recData, recClose:
	case recRefusal:
		return nil, false, c.failRead(fs.Permission, &RefusedError{By: c.peerRole(), Reason: sanitize(body) + " (unauthenticated)"})
	default:
		return nil, false, c.failRead(fs.Invalid, fmt.Errorf("%w: frame %d has unknown type 0x%02x", ErrProtocol, seq, typ))
	}
	var dst []byte
	if c.sess.frames.maxPlain(body) <= len(room) {
		dst = room[:0:len(room)]
	}
	pt, err = c.sess.frames.open(dst, body, setAD(&c.rad, seq, typ))
	if err != nil {
		return nil, false, c.failRead(fs.IO, fmt.Errorf("frame %d %w", seq, ErrFrameAuth))
	}
	c.rseq++
	if typ == recClose {
		if len(pt) != 0 {
			return nil, false, c.failRead(fs.Invalid, fmt.Errorf("%w: close frame %d carries data", ErrProtocol, seq))
		}
		c.rerr = io.EOF
		return nil, false, io.EOF
	}
	if len(pt) == 0 {
		return nil, false, c.failRead(fs.Invalid, fmt.Errorf("%w: frame %d is empty", ErrProtocol, seq))
	}
	return pt, dst != nil, nil
}

func (c *Conn) peerRole() string {
	if c.client {
		return "server"
	}
	return "client"
}

// failRead records a fatal read error and tears the link down.
func (c *Conn) failRead(kind fs.Kind, cause error) error {
	e := &fs.Error{Op: "link read", Path: c.peer, Kind: kind, Err: cause}
	c.rerr = e
	if c.closed.CompareAndSwap(false, true) {
		c.fatal.Store(e)
		c.conn.Close()
	}
	return e
}

// closedCause says why a closed link is closed.
func closedCause(c *Conn) error {
	if f := c.fatal.Load(); f != nil {
		return fmt.Errorf("link closed after an earlier error: %w", f.Err)
	}
	return fmt.Errorf("link is closed: %w", net.ErrClosed)
}

func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Write seals p into frames of at most MaxFramePayload bytes and sends
// them, up to writeBatch frames to a system call.
func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return 0, c.werr
	}
	n := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), writeBatch*MaxFramePayload)]
		frames := (len(chunk) + MaxFramePayload - 1) / MaxFramePayload
		if need := len(chunk) + frames*(headerSize+frameOverhead); cap(c.wbuf) < need {
			c.wbuf = make([]byte, 0, max(need, min(2*cap(c.wbuf), maxWriteBuf)))
		}
		seq0 := c.wseq
		buf := c.wbuf[:0]
		for off := 0; off < len(chunk); {
			k := min(len(chunk)-off, MaxFramePayload)
			h := len(buf)
			buf = append(buf, 0, 0, 0, 0)
			var err error
			buf, err = c.sess.frames.seal(buf, chunk[off:off+k], setAD(&c.wad, c.wseq, recData))
			if err != nil {
				c.werr = &fs.Error{Op: "link write", Path: c.peer, Kind: fs.Other, Err: err}
				return n, c.werr
			}
			putHeader(buf[h:], recData, len(buf)-h-headerSize)
			c.wseq++
			off += k
		}
		w, err := c.conn.Write(buf)
		if err != nil {
			if w == 0 && isTimeout(err) && !c.closed.Load() {
				c.wseq = seq0 // nothing went out; the stream is intact
				return n, err
			}
			c.werr = c.writeErr(err)
			return n, c.werr
		}
		p = p[len(chunk):]
		n += len(chunk)
	}
	return n, nil
}

func (c *Conn) writeErr(err error) error {
	switch {
	case c.closed.Load():
		return &fs.Error{Op: "link write", Path: c.peer, Kind: fs.BadHandle, Err: closedCause(c)}
	case isTimeout(err):
		return &fs.Error{Op: "link write", Path: c.peer, Kind: fs.Timeout,
			Err: fmt.Errorf("timed out inside a frame, the link is broken: %w", err)}
	default:
		return &fs.Error{Op: "link write", Path: c.peer, Kind: fs.Unavailable, Err: err}
	}
}

// sealRecord seals plaintext as the next frame of type typ with Tink's
// primitive and returns the whole record. Called with wmu held, or
// before the Conn is shared.
func (c *Conn) sealRecord(typ byte, plaintext []byte) ([]byte, error) {
	ct, err := c.sess.tink.Encrypt(plaintext, setAD(&c.wad, c.wseq, typ))
	if err != nil {
		return nil, err
	}
	c.wseq++
	return appendRecord(make([]byte, 0, headerSize+len(ct)), typ, ct), nil
}

// openRecord opens body as the next frame of type typ with Tink's
// primitive. Called with rmu held, or before the Conn is shared.
func (c *Conn) openRecord(typ byte, body []byte) ([]byte, error) {
	pt, err := c.sess.tink.Decrypt(body, setAD(&c.rad, c.rseq, typ))
	if err != nil {
		return nil, err
	}
	c.rseq++
	return pt, nil
}

// Close sends the authenticated close frame (waiting at most two seconds
// for the connection to take it) and closes the connection. Only the
// first call does anything; later calls return nil.
func (c *Conn) Close() error {
	if !c.closed.CompareAndSwap(false, true) {
		return nil
	}
	c.conn.SetWriteDeadline(time.Now().Add(closeTimeout))
	c.wmu.Lock()
	if c.werr == nil {
		if rec, err := c.sealRecord(recClose, []byte{}); err == nil {
			c.conn.Write(rec)
		}
		c.werr = &fs.Error{Op: "link write", Path: c.peer, Kind: fs.BadHandle, Err: closedCause(c)}
	}
	c.wmu.Unlock()
	if err := c.conn.Close(); err != nil {
		return &fs.Error{Op: "link close", Path: c.peer, Kind: fs.Other, Err: err}
	}
	return nil
}
