package link

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tink-crypto/tink-go/v2/keyset"

	"strata/fs"
)

// frameConn is one side's connection in FuzzFrames: a net.Pipe end for
// the handshake, then, once switched, a script: what the side writes is
// kept, and what it reads is the bytes it was given, in pieces.
type frameConn struct {
	net.Conn

	mu         sync.Mutex
	switched   bool
	out        bytes.Buffer // written after the switch
	in         []byte       // read after the switch
	chunk      int          // the most one Read returns
	stalls     int          // empty reads before each read that returns bytes, at most maxStalls in all
	eofLast    bool         // the read that returns the last bytes says io.EOF too
	stalled    int
	stallsLeft int
	closed     bool
}

// maxStalls bounds the empty reads of one stream. The record reader
// gives up (io.ErrNoProgress) only after 100 empty reads in a row; the
// stream's stalls come at most three in a row, however many in all.
const maxStalls = 1 << 20

// switchTo ends the handshake part: from now on the side reads in.
func (c *frameConn) switchTo(in []byte, chunk, stalls int, eofLast bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.switched, c.in, c.chunk, c.stalls, c.eofLast = true, in, max(chunk, 1), stalls, eofLast
	c.stalled, c.stallsLeft = 0, maxStalls
}

func (c *frameConn) written() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.out.Bytes())
}

func (c *frameConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	if !c.switched {
		c.mu.Unlock()
		return c.Conn.Read(p)
	}
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	if len(c.in) == 0 {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	if c.stalled < c.stalls && c.stallsLeft > 0 {
		c.stalled++
		c.stallsLeft--
		return 0, nil
	}
	c.stalled = 0
	n := copy(p, c.in[:min(len(c.in), c.chunk)])
	c.in = c.in[n:]
	if len(c.in) == 0 && c.eofLast {
		return n, io.EOF
	}
	return n, nil
}

func (c *frameConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if !c.switched {
		c.mu.Unlock()
		return c.Conn.Write(p)
	}
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	return c.out.Write(p)
}

func (c *frameConn) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	return c.Conn.Close()
}

func (c *frameConn) SetDeadline(t time.Time) error {
	if c.isSwitched() {
		return nil
	}
	return c.Conn.SetDeadline(t)
}

func (c *frameConn) SetReadDeadline(t time.Time) error {
	if c.isSwitched() {
		return nil
	}
	return c.Conn.SetReadDeadline(t)
}

func (c *frameConn) SetWriteDeadline(t time.Time) error {
	if c.isSwitched() {
		return nil
	}
	return c.Conn.SetWriteDeadline(t)
}

func (c *frameConn) isSwitched() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.switched
}

// framesKeys are the link keysets of FuzzFrames, one per method, made
// once per process.
var framesKeys = sync.OnceValues(func() (map[Method]*keyset.Handle, error) {
	ks := map[Method]*keyset.Handle{}
	for _, m := range []Method{AES256GCM, XChaCha20Poly1305} {
		h, err := NewKeyset(m)
		if err != nil {
			return nil, err
		}
		ks[m] = h
	}
	return ks, nil
})

// framesSession is one real link between a client and a server, both
// switched off the pipe once the handshake is done.
type framesSession struct {
	client, server       *Conn
	clientRaw, serverRaw *frameConn
}

func (s *framesSession) close() {
	s.client.Close()
	s.server.Close()
}

// newFramesSession runs a real handshake over net.Pipe and switches both
// sides to scripts: the server will read in.
func newFramesSession(t *testing.T, m Method, in []byte, chunk, stalls int, eofLast bool) *framesSession {
	t.Helper()
	ks, err := framesKeys()
	if err != nil {
		t.Fatal(err)
	}
	keys := ks[m]
	a, b := net.Pipe()
	ca, cb := &frameConn{Conn: a}, &frameConn{Conn: b}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	type res struct {
		c   *Conn
		err error
	}
	done := make(chan res, 1)
	go func() {
		c, err := Client(ctx, ca, Config{Name: "alice", Method: m, Keys: fixed(keys)})
		done <- res{c, err}
	}()
	sc, serr := Server(ctx, cb, ServerConfig{Name: "edge/g1", Method: m, Keys: anyPeer(keys)})
	cr := <-done
	if cr.err != nil || serr != nil {
		t.Fatalf("handshake failed: client: %v; server: %v", cr.err, serr)
	}
	ca.switchTo(nil, 1, 0, false)
	cb.switchTo(in, chunk, stalls, eofLast)
	return &framesSession{client: cr.c, server: sc, clientRaw: ca, serverRaw: cb}
}

// sealed returns the records the client seals for writes (and its close
// frame, if closeFrame), and those the server seals for back.
func (s *framesSession) sealed(t *testing.T, writes [][]byte, closeFrame bool, back []byte) (client, server []byte) {
	t.Helper()
	for _, w := range writes {
		if n, err := s.client.Write(w); err != nil || n != len(w) {
			t.Fatalf("client write of %d bytes: %d, %v", len(w), n, err)
		}
	}
	if closeFrame {
		s.client.Close()
	}
	if n, err := s.server.Write(back); err != nil || n != len(back) {
		t.Fatalf("server write: %d, %v", n, err)
	}
	return s.clientRaw.written(), s.serverRaw.written()
}

// splitRecords cuts a stream into records by their headers; a last
// piece that is not a whole record is kept as it is.
func splitRecords(b []byte) [][]byte {
	var recs [][]byte
	for len(b) > 0 {
		n := len(b)
		if len(b) >= headerSize && headerSize+headerLen(b) <= len(b) {
			n = headerSize + headerLen(b)
		}
		recs = append(recs, b[:n:n])
		b = b[n:]
	}
	return recs
}

// editStream applies script to stream, four bytes an operation: op,
// a, b, c. Record operations count the records of the stream as it is
// at that point. other yields records of another session of the same
// keys, reflect the records the receiver itself sent.
func editStream(stream, script []byte, other func() [][]byte, reflect [][]byte) []byte {
	s := bytes.Clone(stream)
	for ops := 0; len(script) >= 4 && ops < 32; ops++ {
		op, a, b, c := script[0], int(script[1]), int(script[2]), script[3]
		script = script[4:]
		pos := a<<8 | b
		recs := splitRecords(s)
		n := len(recs)
		join := func() { s = bytes.Join(recs, nil) }
		insertRec := func(at int, r []byte) {
			recs = append(recs[:at], append([][]byte{bytes.Clone(r)}, recs[at:]...)...)
			join()
		}
		switch op % 13 {
		case 0: // flip a bit
			if len(s) > 0 {
				s[pos%len(s)] ^= 1 << (c & 7)
			}
		case 1: // set a byte
			if len(s) > 0 {
				s[pos%len(s)] = c
			}
		case 2: // truncate
			s = s[:pos%(len(s)+1)]
		case 3: // drop a record
			if n > 0 {
				i := a % n
				recs = append(recs[:i], recs[i+1:]...)
				join()
			}
		case 4: // replay a record after itself
			if n > 0 {
				insertRec(a%n+1, recs[a%n])
			}
		case 5: // swap two records
			if n > 0 {
				recs[a%n], recs[b%n] = recs[b%n], recs[a%n]
				join()
			}
		case 6: // insert raw bytes from the script
			k := min(int(c), len(script))
			at := pos % (len(s) + 1)
			s = append(s[:at], append(bytes.Clone(script[:k]), s[at:]...)...)
			script = script[k:]
		case 7: // splice in a record of another session
			if o := other(); len(o) > 0 {
				insertRec(b%(n+1), o[a%len(o)])
			}
		case 8: // reflect one of the receiver's own records back to it
			if len(reflect) > 0 {
				insertRec(b%(n+1), reflect[a%len(reflect)])
			}
		case 9: // change a record's length field
			if n > 0 && len(recs[a%n]) >= headerSize {
				r := bytes.Clone(recs[a%n])
				l := max(0, min(headerLen(r)+int(int8(c)), 1<<24-1))
				putHeader(r, r[0], l)
				recs[a%n] = r
				join()
			}
		case 10: // change a record's type
			if n > 0 {
				r := bytes.Clone(recs[a%n])
				r[0] = c
				recs[a%n] = r
				join()
			}
		case 11: // move a record to the end
			if n > 0 {
				r := recs[a%n]
				recs = append(recs[:a%n], recs[a%n+1:]...)
				recs = append(recs, r)
				join()
			}
		case 12: // cut c bytes out
			at := pos % (len(s) + 1)
			s = append(s[:at], s[min(len(s), at+int(c)):]...)
		}
	}
	return s
}

// maxPlain bounds the plaintext of one FuzzFrames input: enough for
// writes of several frames and reads that open several at once.
const maxPlain = 320 << 10

// maxReads bounds the reads of one FuzzFrames input, so that a long
// stream read in small pieces stays quick.
const maxReads = 20000

// writesOf cuts data after each sep byte, each piece repeated grow²
// times (at most maxPlain bytes in all), so that writes of several
// frames come from short inputs.
func writesOf(data []byte, sep, grow byte) [][]byte {
	var ws [][]byte
	total := 0
	for len(data) > 0 && total < maxPlain {
		i := bytes.IndexByte(data, sep)
		if i < 0 {
			i = len(data) - 1
		}
		piece := data[:i+1]
		times := max(1, min(int(grow)*int(grow), (maxPlain-total)/len(piece)+1))
		w := bytes.Repeat(piece, times)
		w = w[:min(len(w), maxPlain-total)]
		ws = append(ws, w)
		total += len(w)
		data = data[i+1:]
	}
	return ws
}

// framesWatchdog panics, with every goroutine's stack, if an input is not
// done within d: a hang is a crash the fuzzer keeps.
func framesWatchdog(d time.Duration) (stop func() bool) {
	return time.AfterFunc(d, func() {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		panic(fmt.Sprintf("FuzzFrames input did not finish within %v:\n%s", d, buf))
	}).Stop
}

// FuzzFrames makes a real link (the handshake over net.Pipe), has the
// client seal genuine frames, and lets the fuzzer edit that stream (flip,
// set, insert and cut bytes; drop, replay, swap, move, retype and resize
// records; splice in records of another session and the receiver's own)
// before the server reads it, in pieces of a fuzzed size into a buffer of
// a fuzzed size. Nothing may panic or hang; what the server reads is
// exactly the plaintext of the genuine frames before the first one that
// was altered; and the error then names the cause: a tampered frame fails
// authentication ("frame N failed authentication"), a cut stream is
// truncated, a malformed record a protocol error, a refusal record a
// refusal. Only an intact stream ending in the close frame reads to
// io.EOF.
//
//	go test -run '^$' -fuzz '^FuzzFrames$' -fuzztime 1m -parallel 1 ./mount/link/
func FuzzFrames(f *testing.F) {
	for _, s := range []struct {
		data        string
		sep, grow   byte
		script      []byte
		chunk, rbuf uint16
		flags       byte
	}{
		{"one:alpha\ntwo:bravo\nthree:charlie\n", '\n', 1, nil, 0xffff, 0xffff, 0x01},
		{"one:alpha\ntwo:bravo\n", '\n', 1, nil, 7, 3, 0x00},
		{"one:alpha\ntwo:bravo\nthree:charlie\n", '\n', 1, []byte{0, 0, 40, 4}, 100, 1000, 0x01},
		{"one:alpha\ntwo:bravo\nthree:charlie\n", '\n', 1, []byte{4, 1, 0, 0}, 100, 1000, 0x03},
		{"one:alpha\ntwo:bravo\nthree:charlie\n", '\n', 1, []byte{3, 0, 0, 0}, 100, 1000, 0x05},
		{"one:alpha\ntwo:bravo\nthree:charlie\n", '\n', 1, []byte{5, 0, 1, 0}, 1, 1, 0x19},
		{"one:alpha\ntwo:bravo\nthree:charlie\n", '\n', 1, []byte{2, 0, 30, 0}, 5, 5, 0x01},
		{"one:alpha\ntwo:bravo\nthree:charlie\n", '\n', 1, []byte{10, 1, 0, 'C'}, 0xffff, 0xffff, 0x01},
		{"one:alpha\ntwo:bravo\nthree:charlie\n", '\n', 1, []byte{10, 1, 0, 'R'}, 0xffff, 0xffff, 0x01},
		{"one:alpha\ntwo:bravo\nthree:charlie\n", '\n', 1, []byte{10, 2, 0, 'Z'}, 0xffff, 0xffff, 0x01},
		{"one:alpha\ntwo:bravo\nthree:charlie\n", '\n', 1, []byte{9, 1, 0, 0x7f}, 0xffff, 0xffff, 0x01},
		{"one:alpha\ntwo:bravo\nthree:charlie\n", '\n', 1, []byte{9, 1, 0, 0xf0}, 0xffff, 0xffff, 0x01},
		{"one:alpha\ntwo:bravo\nthree:charlie\n", '\n', 1, []byte{7, 1, 1, 0}, 0xffff, 0xffff, 0x01},
		{"one:alpha\ntwo:bravo\nthree:charlie\n", '\n', 1, []byte{8, 0, 0, 0}, 0xffff, 0xffff, 0x01},
		{"one:alpha\ntwo:bravo\nthree:charlie\n", '\n', 1, []byte{11, 0, 0, 0}, 0xffff, 0xffff, 0x01},
		{"one:alpha\ntwo:bravo\nthree:charlie\n", '\n', 1, []byte{12, 0, 60, 9}, 0xffff, 0xffff, 0x01},
		{"one:alpha\n", '\n', 1, []byte{6, 0, 0, 4, 'D', 0xff, 0xff, 0xff}, 0xffff, 0xffff, 0x01},
		{"one:alpha\n", '\n', 1, []byte{6, 0, 0, 4, 'D', 0x01, 0x00, 0x41}, 0xffff, 0xffff, 0x01},
		{"0123456789abcdef", 0, 255, nil, 0xffff, 0xffff, 0x01},
		{"0123456789abcdef", 0, 255, []byte{0, 0xff, 0, 1}, 0xffff, 0xffff, 0x03},
		{"0123456789abcdef", 0, 255, []byte{4, 2, 0, 0}, 0x4000, 0x8100, 0x01},
		{"0123456789abcdef", 0, 255, []byte{10, 3, 0, 'C'}, 0xffff, 0xffff, 0x05},
		{"0123456789abcdef", 0, 255, []byte{5, 1, 4, 0}, 0xffff, 0xffff, 0x01},
		{"abcdefgh|ijklmnop|", '|', 100, []byte{2, 0xff, 0xff, 0}, 0x1234, 0x0100, 0x00},
		{"abcdefgh|ijklmnop|", '|', 100, nil, 0x1234, 0x8100, 0x03},
		{"", 0, 0, nil, 10, 10, 0x01},
		{"", 0, 0, nil, 10, 10, 0x00},
	} {
		f.Add([]byte(s.data), s.sep, s.grow, s.script, s.chunk, s.rbuf, s.flags)
	}
	if _, err := framesKeys(); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte, sep, grow byte, script []byte, chunk, rbuf uint16, flags byte) {
		defer framesWatchdog(8 * time.Second)()
		m := AES256GCM
		if flags&0x02 != 0 {
			m = XChaCha20Poly1305
		}
		closeFrame := flags&0x01 != 0
		writes := writesOf(data, sep, grow)
		back := []byte("the server's own words")

		// The genuine stream, sealed by the client of the session whose
		// server reads the fuzzer's edit of it.
		sess := newFramesSession(t, m, nil, 1, 0, false)
		defer sess.close()
		stream, own := sess.sealed(t, writes, closeFrame, back)
		genuine := splitRecords(stream)
		var plain [][]byte // of each genuine data frame
		for _, w := range writes {
			for off := 0; off < len(w); off += MaxFramePayload {
				plain = append(plain, w[off:min(len(w), off+MaxFramePayload)])
			}
		}
		if want := len(plain) + btoi(closeFrame); len(genuine) != want {
			t.Fatalf("%d writes sealed into %d records, want %d", len(writes), len(genuine), want)
		}
		var otherRecs [][]byte
		other := func() [][]byte {
			if otherRecs == nil {
				o := newFramesSession(t, m, nil, 1, 0, false)
				s, _ := o.sealed(t, writes, closeFrame, back)
				o.close()
				otherRecs = splitRecords(s)
			}
			return otherRecs
		}
		edited := editStream(stream, script, other, splitRecords(own))
		piece := 1 + int(chunk)
		if chunk&0x8000 != 0 {
			piece = 1 + int(chunk&0x7fff)*16
		}
		piece = max(piece, len(edited)/maxReads)
		sess.serverRaw.switchTo(edited, piece, int(flags>>3&3), flags&0x04 != 0)

		// What must come out: the plaintext of the genuine frames before
		// the first record that differs, then the error that record earns.
		recs := splitRecords(edited)
		k := 0
		for k < len(recs) && k < len(genuine) && bytes.Equal(recs[k], genuine[k]) {
			k++
		}
		wantPlain := bytes.Join(plain[:min(k, len(plain))], nil)

		size := 1 + int(rbuf)
		if rbuf&0x8000 != 0 {
			size = 1 + int(rbuf&0x7fff)*8
		}
		size = max(size, len(wantPlain)/maxReads)
		got, err := readAll(sess.server, size)
		if !bytes.Equal(got, wantPlain) {
			if !bytes.HasPrefix(bytes.Join(plain, nil), got) {
				t.Fatalf("the server read %d bytes that the client did not seal in that order (then %v)", len(got), err)
			}
			t.Fatalf("the server read %d bytes of the genuine plaintext, want the %d before record %d (then %v)", len(got), len(wantPlain), k, err)
		}
		checkFrameErr(t, err, recs, genuine, k, closeFrame)
		if _, again := sess.server.Read(make([]byte, 16)); again == nil || again.Error() != err.Error() {
			t.Fatalf("a read after %v: %v; want the same error", err, again)
		}
	})
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// readAll reads c until an error, size bytes at a time.
func readAll(c *Conn, size int) ([]byte, error) {
	var got []byte
	buf := make([]byte, size)
	for empty := 0; ; {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			return got, err
		}
		if n == 0 {
			if empty++; empty > 1000 {
				return got, errors.New("reads return nothing and no error")
			}
		}
	}
}

// checkFrameErr checks the error that ended the server's reading: recs
// are the records it was given, genuine those its client sealed, k the
// first that differs.
func checkFrameErr(t *testing.T, err error, recs, genuine [][]byte, k int, closeFrame bool) {
	t.Helper()
	seq := k + 1 // the finished record is frame 0
	want := func(kind fs.Kind, is error, text string) {
		t.Helper()
		var fe *fs.Error
		if !errors.As(err, &fe) || fe.Op != "link read" {
			t.Fatalf("error %v (%T): want an *fs.Error of link read", err, err)
		}
		if fs.KindOf(err) != kind || (is != nil && !errors.Is(err, is)) || !strings.Contains(err.Error(), text) {
			t.Fatalf("record %d: error %q (kind %v), want kind %v, %v, saying %q", k, err, fs.KindOf(err), kind, is, text)
		}
	}
	if k == len(genuine) && closeFrame {
		if err != io.EOF {
			t.Fatalf("an intact stream with its close frame: %v, want io.EOF", err)
		}
		return
	}
	if err == io.EOF {
		t.Fatalf("io.EOF without the genuine close frame (record %d of %d differs)", k, len(genuine))
	}
	if k == len(recs) {
		want(fs.Unavailable, ErrTruncated, "connection ended without close frame")
		return
	}
	r := recs[k]
	if len(r) < headerSize {
		want(fs.Unavailable, ErrTruncated, fmt.Sprintf("connection ended inside frame %d", seq))
		return
	}
	n := headerLen(r)
	switch {
	case n > maxFrameBody:
		want(fs.Invalid, ErrProtocol, fmt.Sprintf("frame %d: record of %d bytes exceeds the limit", seq, n))
	case len(r) < headerSize+n:
		want(fs.Unavailable, ErrTruncated, fmt.Sprintf("connection ended inside frame %d", seq))
	case r[0] == recRefusal:
		var re *RefusedError
		if !errors.As(err, &re) {
			t.Fatalf("a refusal record: %v, want a RefusedError", err)
		}
		want(fs.Permission, nil, "(unauthenticated)")
	case r[0] != recData && r[0] != recClose:
		want(fs.Invalid, ErrProtocol, fmt.Sprintf("frame %d has unknown type", seq))
	default:
		want(fs.IO, ErrFrameAuth, fmt.Sprintf("frame %d failed authentication", seq))
	}
}
