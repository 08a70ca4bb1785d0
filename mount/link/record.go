package link

import (
	"fmt"
	"io"
)

// Record types.
const (
	recHello    byte = 'H'
	recFinished byte = 'F'
	recRefusal  byte = 'R'
	recData     byte = 'D'
	recClose    byte = 'C'
)

// MaxFramePayload is the most plaintext one data frame carries. A larger
// Write is split into frames of this size.
const MaxFramePayload = 64 << 10

const (
	headerSize = 4 // type, 3-byte length

	// frameOverhead bounds what an AEAD ciphertext adds to its plaintext:
	// the 5-byte Tink prefix, a nonce of up to 24 bytes, a 16-byte tag.
	frameOverhead = 64

	// maxFrameBody is the largest frame body a reader accepts.
	maxFrameBody = MaxFramePayload + frameOverhead

	// maxHandshakeBody is the largest handshake record a reader accepts.
	maxHandshakeBody = 2048

	// maxRefusal is the longest refusal reason sent or shown.
	maxRefusal = 512

	// initialReadBuf is a link's read buffer until a large frame comes.
	initialReadBuf = 8 << 10

	// readBufSize holds several whole frames, so one read syscall can
	// bring in more than one and a Read can open them in parallel.
	readBufSize = 8*(headerSize+maxFrameBody) + 4096

	// writeBatch is how many frames one write system call carries at most.
	writeBatch = 4

	// maxOpenBatch is how many buffered frames a Read opens at once at
	// most.
	maxOpenBatch = 8

	// minParallelOpen is the least plaintext in buffered frames that a
	// Read shares out among goroutines; smaller frames are opened in
	// turn, as starting a helper would cost more than it saves.
	minParallelOpen = 32 << 10

	// maxWriteBuf holds one batch of sealed frames.
	maxWriteBuf = writeBatch * (headerSize + maxFrameBody)
)

// errRecordTooLong reports a record whose declared length is beyond the
// reader's limit.
type errRecordTooLong struct{ n, limit int }

func (e errRecordTooLong) Error() string {
	return fmt.Sprintf("record of %d bytes exceeds the limit of %d", e.n, e.limit)
}

func putHeader(b []byte, typ byte, n int) {
	b[0] = typ
	b[1] = byte(n >> 16)
	b[2] = byte(n >> 8)
	b[3] = byte(n)
}

func headerLen(b []byte) int { return int(b[1])<<16 | int(b[2])<<8 | int(b[3]) }

// appendRecord appends a whole record to dst.
func appendRecord(dst []byte, typ byte, body []byte) []byte {
	var h [headerSize]byte
	putHeader(h[:], typ, len(body))
	return append(append(dst, h[:]...), body...)
}

// recordReader splits a byte stream into records. It keeps what it has
// read when the underlying Read fails, so a read that times out can be
// retried without losing the stream's place. Its buffer starts small and
// grows once to readBufSize when a record needs it.
type recordReader struct {
	r          io.Reader
	buf        []byte
	start, end int
}

func newRecordReader(r io.Reader, size int) *recordReader {
	return &recordReader{r: r, buf: make([]byte, size)}
}

// fill makes at least n bytes available from start. At the end of the
// stream it returns io.EOF if nothing is buffered, else io.ErrUnexpectedEOF.
func (rr *recordReader) fill(n int) error {
	if rr.end-rr.start >= n {
		return nil
	}
	switch {
	case n > len(rr.buf):
		nb := make([]byte, max(n, readBufSize))
		rr.end = copy(nb, rr.buf[rr.start:rr.end])
		rr.start, rr.buf = 0, nb
	case rr.start == rr.end:
		rr.start, rr.end = 0, 0
	case len(rr.buf)-rr.start < n:
		rr.end = copy(rr.buf, rr.buf[rr.start:rr.end])
		rr.start = 0
	}
	for empty := 0; rr.end-rr.start < n; {
		m, err := rr.r.Read(rr.buf[rr.end:])
		rr.end += m
		if rr.end-rr.start >= n {
			return nil
		}
		if err != nil {
			if err == io.EOF && rr.end > rr.start {
				return io.ErrUnexpectedEOF
			}
			return err
		}
		if m > 0 {
			empty = 0
		} else if empty++; empty > 100 {
			return io.ErrNoProgress // a reader that neither gives nor fails
		}
	}
	return nil
}

// next returns the next record. body aliases the buffer and is valid
// until the following call. On error nothing is consumed.
func (rr *recordReader) next(limit int) (typ byte, body []byte, err error) {
	if err := rr.ensure(limit); err != nil {
		return 0, nil, err
	}
	typ, body, size, _ := rr.peek(0)
	rr.start += size
	return typ, body, nil
}

// ensure reads until the next record is wholly buffered. On error
// nothing is consumed.
func (rr *recordReader) ensure(limit int) error {
	if err := rr.fill(headerSize); err != nil {
		return err
	}
	n := headerLen(rr.buf[rr.start:])
	if n > limit {
		return errRecordTooLong{n, limit}
	}
	if err := rr.fill(headerSize + n); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	return nil
}

// peek returns the record off bytes past the next one, if it is wholly
// buffered, with its size on the wire. body aliases the buffer and is
// valid until the buffer is next read into.
func (rr *recordReader) peek(off int) (typ byte, body []byte, size int, ok bool) {
	at := rr.start + off
	if rr.end-at < headerSize {
		return 0, nil, 0, false
	}
	size = headerSize + headerLen(rr.buf[at:])
	if rr.end-at < size {
		return 0, nil, 0, false
	}
	return rr.buf[at], rr.buf[at+headerSize : at+size], size, true
}

// discard consumes n buffered bytes: whole records returned by peek.
func (rr *recordReader) discard(n int) { rr.start += n }

// buffered reports whether a whole record is already in the buffer, so
// next would return without reading.
func (rr *recordReader) buffered() bool {
	_, _, _, ok := rr.peek(0)
	return ok
}
