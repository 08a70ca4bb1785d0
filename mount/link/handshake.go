package link

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/tink-crypto/tink-go/v2/keyset"

	"strata/fs"
)

const (
	// version is the protocol version tag in every hello.
	version = "strata-link/1"

	nonceSize = 32

	sessionLabel        = "strata link session v1\x00"
	clientFinishedLabel = "strata link finished: client"
	serverFinishedLabel = "strata link finished: server"

	// opHandshake is the Op of every handshake error.
	opHandshake = "link handshake"
)

// Config configures the dialing side of a link.
type Config struct {
	// Name is this side's identity, e.g. "edge/g1" or a client's name:
	// 1 to 255 bytes of printable UTF-8.
	Name string
	// Method is the link's AEAD method; the keyset must derive it.
	Method Method
	// Keys returns the link keyset. It is called for every handshake, so
	// a rotated keyset takes effect without a restart. The session uses
	// its primary key.
	Keys func() *keyset.Handle
}

// ServerConfig configures the accepting side of a link.
type ServerConfig struct {
	// Name is this side's identity, sent to every peer.
	Name string
	// Method is the link's AEAD method; a peer offering another is refused.
	Method Method
	// Keys returns the keyset for the named peer (a link with one keyset
	// for every peer ignores the name), or an error if the peer is
	// unknown. Any enabled key of the keyset is accepted.
	Keys func(peer string) (*keyset.Handle, error)
	// HandshakeTimeout bounds each handshake run by a Listener.
	// Zero means 10 seconds.
	HandshakeTimeout time.Duration
}

func checkName(name string) error {
	if name == "" || len(name) > 255 || !utf8.ValidString(name) {
		return fmt.Errorf("name %q must be 1 to 255 bytes of UTF-8", name)
	}
	for _, r := range name {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("name %q has an unprintable character", name)
		}
	}
	return nil
}

func checkConfig(name string, m Method, haveKeys bool) error {
	if err := checkName(name); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if !m.valid() {
		return fmt.Errorf("config: unknown method %q (want %s or %s)", m, AES256GCM, XChaCha20Poly1305)
	}
	if !haveKeys {
		return errors.New("config: no Keys function")
	}
	return nil
}

// hello is the first message of each side.
type hello struct {
	version string
	method  Method
	name    string
	nonce   [nonceSize]byte
	keyID   uint32
}

func (h *hello) record() []byte {
	b := make([]byte, headerSize, headerSize+3+len(h.version)+len(h.method)+len(h.name)+nonceSize+4)
	for _, s := range []string{h.version, string(h.method), h.name} {
		b = append(b, byte(len(s)))
		b = append(b, s...)
	}
	b = append(b, h.nonce[:]...)
	b = binary.BigEndian.AppendUint32(b, h.keyID)
	putHeader(b, recHello, len(b)-headerSize)
	return b
}

func parseHello(b []byte) (hello, error) {
	var h hello
	var fields [3]string
	for i := range fields {
		if len(b) < 1 || len(b) < 1+int(b[0]) {
			return h, errors.New("short hello")
		}
		fields[i] = string(b[1 : 1+int(b[0])])
		b = b[1+int(b[0]):]
	}
	if len(b) != nonceSize+4 {
		return h, errors.New("bad hello length")
	}
	h.version, h.method, h.name = fields[0], Method(fields[1]), fields[2]
	copy(h.nonce[:], b)
	h.keyID = binary.BigEndian.Uint32(b[nonceSize:])
	if err := checkName(h.name); err != nil {
		return h, err
	}
	return h, nil
}

func sessionID(clientHello, serverHello []byte) [sessionIDSize]byte {
	d := sha256.New()
	d.Write([]byte(sessionLabel))
	d.Write(clientHello)
	d.Write(serverHello)
	var sid [sessionIDSize]byte
	d.Sum(sid[:0])
	return sid
}

// handshake holds what both sides of a handshake share.
type handshake struct {
	ctx  context.Context
	conn net.Conn
	rr   *recordReader
	path string // for errors: the remote address, later name@address
	stop func() bool
}

func newHandshake(ctx context.Context, conn net.Conn) *handshake {
	hs := &handshake{ctx: ctx, conn: conn, rr: newRecordReader(conn, initialReadBuf)}
	if a := conn.RemoteAddr(); a != nil {
		hs.path = a.String()
	}
	if d, ok := ctx.Deadline(); ok {
		conn.SetDeadline(d)
	}
	hs.stop = context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	return hs
}

// finish ends the handshake: it clears the deadlines on success and
// closes the connection on failure.
func (hs *handshake) finish(c *Conn, err error) (*Conn, error) {
	if !hs.stop() && err == nil {
		err = hs.fail(fs.Other, "", hs.ctx.Err())
	}
	if err != nil {
		hs.conn.Close()
		return nil, err
	}
	if err := hs.conn.SetDeadline(time.Time{}); err != nil {
		hs.conn.Close()
		return nil, hs.fail(fs.Unavailable, "", err)
	}
	return c, nil
}

// fail builds a handshake error. A context that is done explains any
// I/O error, as a timeout or a cancellation.
func (hs *handshake) fail(kind fs.Kind, stage string, err error) error {
	if ce := hs.ctx.Err(); ce != nil && (kind == fs.Unavailable || kind == fs.Other) {
		kind, err = fs.KindOf(ce), ce
	} else if kind == fs.Unavailable {
		switch {
		case isTimeout(err):
			kind = fs.Timeout
		case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
			err = errors.New("connection closed by peer")
		}
	}
	if stage != "" {
		err = fmt.Errorf("%s: %w", stage, err)
	}
	return &fs.Error{Op: opHandshake, Path: hs.path, Kind: kind, Err: err}
}

// refuse tells the peer why (best effort) and returns the local error.
func (hs *handshake) refuse(kind fs.Kind, reason error) error {
	text := reason.Error()
	if len(text) > maxRefusal {
		text = text[:maxRefusal]
	}
	hs.conn.Write(appendRecord(nil, recRefusal, []byte(text)))
	return &fs.Error{Op: opHandshake, Path: hs.path, Kind: kind, Err: reason}
}

func (hs *handshake) write(stage string, rec []byte) error {
	if _, err := hs.conn.Write(rec); err != nil {
		return hs.fail(fs.Unavailable, stage, err)
	}
	return nil
}

// read reads the next handshake record, which must be of type want or a
// refusal from the peer (by names the peer's role).
func (hs *handshake) read(stage string, want byte, by string) ([]byte, error) {
	typ, body, err := hs.rr.next(maxHandshakeBody)
	var tl errRecordTooLong
	switch {
	case errors.As(err, &tl):
		return nil, hs.refuse(fs.Invalid, fmt.Errorf("%w: %s: %v", ErrProtocol, stage, tl))
	case err != nil:
		return nil, hs.fail(fs.Unavailable, stage, err)
	case typ == recRefusal:
		return nil, &fs.Error{Op: opHandshake, Path: hs.path, Kind: fs.Permission,
			Err: &RefusedError{By: by, Reason: sanitize(body)}}
	case typ != want:
		return nil, hs.refuse(fs.Invalid, fmt.Errorf("%w: %s: expected record type %q, got 0x%02x", ErrProtocol, stage, want, typ))
	}
	return body, nil
}

// Client runs the dialing side of the handshake over conn and returns the
// link. ctx bounds the handshake: its deadline becomes conn's deadline
// (cleared again on success) and cancelling it aborts. On failure conn is
// closed and the error, an *fs.Error, says why; a refusal from the server
// reads "refused by server: <reason>" and wraps a *RefusedError.
func Client(ctx context.Context, conn net.Conn, cfg Config) (*Conn, error) {
	hs := newHandshake(ctx, conn)
	c, err := hs.client(cfg)
	return hs.finish(c, err)
}

func (hs *handshake) client(cfg Config) (*Conn, error) {
	if err := checkConfig(cfg.Name, cfg.Method, cfg.Keys != nil); err != nil {
		return nil, hs.fail(fs.Invalid, "", err)
	}
	keys := cfg.Keys()
	if keys == nil {
		return nil, hs.fail(fs.Invalid, "", errors.New("config: Keys returned no keyset"))
	}
	m, err := MethodOf(keys)
	if err != nil {
		return nil, hs.fail(fs.Invalid, "keyset", err)
	}
	if m != cfg.Method {
		return nil, hs.fail(fs.Invalid, "", fmt.Errorf("config: the keyset derives %s keys but the link is configured for %s", m, cfg.Method))
	}
	kid, err := primaryKeyID(keys)
	if err != nil {
		return nil, hs.fail(fs.Invalid, "keyset", err)
	}

	ch := hello{version: version, method: cfg.Method, name: cfg.Name, keyID: kid}
	rand.Read(ch.nonce[:])
	chRec := ch.record()
	if err := hs.write("sending hello", chRec); err != nil {
		return nil, err
	}
	body, err := hs.read("reading server hello", recHello, "server")
	if err != nil {
		return nil, err
	}
	shRec := appendRecord(nil, recHello, body)
	sh, err := parseHello(body)
	if err != nil {
		return nil, hs.refuse(fs.Invalid, fmt.Errorf("%w: malformed server hello: %v", ErrProtocol, err))
	}
	hs.path = sh.name + "@" + hs.path
	if sh.version != version {
		return nil, hs.refuse(fs.Invalid, fmt.Errorf("%w %q; this client speaks %q", ErrVersion, sh.version, version))
	}
	if sh.method != cfg.Method {
		return nil, hs.refuse(fs.Permission, fmt.Errorf("%w: peer offered %s, this link uses %s", ErrMethodMismatch, sh.method, cfg.Method))
	}
	if sh.keyID != kid {
		return nil, hs.refuse(fs.Invalid, fmt.Errorf("%w: server accepted key %d, this client offered %d", ErrProtocol, sh.keyID, kid))
	}

	sid := sessionID(chRec, shRec)
	sess, err := deriveSession(keys, kid, sid[:])
	if err != nil {
		return nil, hs.fail(fs.Other, "deriving session keys", err)
	}
	c := newConn(hs.conn, hs.rr, sess, sid, true, sh.name, cfg.Method, kid)
	fin, err := c.sealRecord(recFinished, []byte(clientFinishedLabel))
	if err != nil {
		return nil, hs.fail(fs.Other, "sealing finished", err)
	}
	if err := hs.write("sending finished", fin); err != nil {
		return nil, err
	}
	body, err = hs.read("reading server finished", recFinished, "server")
	if err != nil {
		return nil, err
	}
	if pt, err := c.openRecord(recFinished, body); err != nil || !bytes.Equal(pt, []byte(serverFinishedLabel)) {
		return nil, hs.refuse(fs.Permission, fmt.Errorf("%w: the server's proof did not verify: wrong key for this link", ErrKeyProof))
	}
	return c, nil
}

// Server runs the accepting side of the handshake over conn and returns
// the link, whose Peer is the client's proven name. ctx bounds the
// handshake as for Client. On failure the client is told why where that
// is safe, conn is closed, and the error, an *fs.Error, says why.
func Server(ctx context.Context, conn net.Conn, cfg ServerConfig) (*Conn, error) {
	hs := newHandshake(ctx, conn)
	c, err := hs.server(cfg)
	return hs.finish(c, err)
}

func (hs *handshake) server(cfg ServerConfig) (*Conn, error) {
	if err := checkConfig(cfg.Name, cfg.Method, cfg.Keys != nil); err != nil {
		return nil, hs.fail(fs.Invalid, "", err)
	}
	body, err := hs.read("reading client hello", recHello, "client")
	if err != nil {
		return nil, err
	}
	chRec := appendRecord(nil, recHello, body)
	ch, err := parseHello(body)
	if err != nil {
		return nil, hs.refuse(fs.Invalid, fmt.Errorf("%w: malformed client hello: %v", ErrProtocol, err))
	}
	hs.path = ch.name + "@" + hs.path
	if ch.version != version {
		return nil, hs.refuse(fs.Invalid, fmt.Errorf("%w %q; this server speaks %q", ErrVersion, ch.version, version))
	}
	if ch.method != cfg.Method {
		return nil, hs.refuse(fs.Permission, fmt.Errorf("%w: peer offered %s, this link uses %s", ErrMethodMismatch, ch.method, cfg.Method))
	}
	keys, kerr := cfg.Keys(ch.name)
	if kerr != nil || keys == nil {
		reason := fmt.Errorf("%w %q", ErrUnknownPeer, ch.name)
		err := hs.refuse(fs.Permission, reason)
		if kerr != nil {
			err = &fs.Error{Op: opHandshake, Path: hs.path, Kind: fs.Permission, Err: fmt.Errorf("%w: %w", reason, kerr)}
		}
		return nil, err
	}
	if m, err := MethodOf(keys); err != nil || m != cfg.Method {
		if err == nil {
			err = fmt.Errorf("the keyset derives %s keys but the link is configured for %s", m, cfg.Method)
		}
		hs.refuse(fs.Other, errors.New("server error: no usable keyset for this peer"))
		return nil, hs.fail(fs.Invalid, "keyset for "+ch.name, err)
	}
	e, err := findKey(keys, ch.keyID)
	if err != nil {
		return nil, hs.refuse(fs.Permission, fmt.Errorf("%w: wrong key for this link (key %d is not in this link's keyset)", ErrKeyProof, ch.keyID))
	}
	if e.KeyStatus() != keyset.Enabled {
		return nil, hs.refuse(fs.Permission, fmt.Errorf("%w: key %d was retired from this link", ErrKeyProof, ch.keyID))
	}

	sh := hello{version: version, method: cfg.Method, name: cfg.Name, keyID: ch.keyID}
	rand.Read(sh.nonce[:])
	shRec := sh.record()
	sid := sessionID(chRec, shRec)
	sess, err := deriveSession(keys, ch.keyID, sid[:])
	if err != nil {
		hs.refuse(fs.Other, errors.New("server error: cannot derive session keys"))
		return nil, hs.fail(fs.Other, "deriving session keys", err)
	}
	if err := hs.write("sending hello", shRec); err != nil {
		return nil, err
	}
	c := newConn(hs.conn, hs.rr, sess, sid, false, ch.name, cfg.Method, ch.keyID)
	body, err = hs.read("reading client finished", recFinished, "client")
	if err != nil {
		return nil, err
	}
	if pt, err := c.openRecord(recFinished, body); err != nil || !bytes.Equal(pt, []byte(clientFinishedLabel)) {
		return nil, hs.refuse(fs.Permission, fmt.Errorf("%w: wrong key for this link (the client's proof for key %d did not verify)", ErrKeyProof, ch.keyID))
	}
	fin, err := c.sealRecord(recFinished, []byte(serverFinishedLabel))
	if err != nil {
		return nil, hs.fail(fs.Other, "sealing finished", err)
	}
	if err := hs.write("sending finished", fin); err != nil {
		return nil, err
	}
	return c, nil
}
