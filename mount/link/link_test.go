package link

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tink-crypto/tink-go/v2/insecurecleartextkeyset"
	"github.com/tink-crypto/tink-go/v2/keyset"

	"strata/fs"
)

// methods lists every Method.
func methods() []Method { return []Method{AES256GCM, XChaCha20Poly1305} }

func TestRoundTrip(t *testing.T) {
	for _, m := range methods() {
		t.Run(string(m), func(t *testing.T) {
			keys := newKeys(t, m)
			s := startServer(t, ServerConfig{Name: "appedge/g1", Method: m, Keys: anyPeer(keys)})
			c, sc := connect(t, s, s.addr(), Config{Name: "edge/g1", Method: m, Keys: fixed(keys)})

			if c.Peer() != "appedge/g1" || sc.Peer() != "edge/g1" {
				t.Errorf("peers: client sees %q, server sees %q", c.Peer(), sc.Peer())
			}
			if c.Method() != m || sc.Method() != m {
				t.Errorf("methods: %s, %s; want %s", c.Method(), sc.Method(), m)
			}
			if len(c.SessionID()) != 32 || !bytes.Equal(c.SessionID(), sc.SessionID()) {
				t.Errorf("session IDs differ: %x, %x", c.SessionID(), sc.SessionID())
			}
			if c.KeyID() != primaryID(t, keys) || sc.KeyID() != c.KeyID() {
				t.Errorf("key IDs: client %d, server %d, keyset primary %d", c.KeyID(), sc.KeyID(), primaryID(t, keys))
			}
			if c.RemoteAddr().String() != s.addr() || sc.LocalAddr().String() != s.addr() {
				t.Errorf("addresses: client remote %v, server local %v, want %s", c.RemoteAddr(), sc.LocalAddr(), s.addr())
			}

			exchange(t, c, sc, []byte("Tread fid 1 offset 0"))
			exchange(t, sc, c, []byte("Rread 20 bytes"))
			exchange(t, c, sc, []byte{0})
		})
	}
}

// exchange writes msg on from and checks that to reads exactly msg.
func exchange(t *testing.T, from, to *Conn, msg []byte) {
	t.Helper()
	if n, err := from.Write(msg); n != len(msg) || err != nil {
		t.Fatalf("write: %d, %v", n, err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(to, got); err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("read %q, want %q", got, msg)
	}
}

// stream sends size pseudo-random bytes from w to r in writes of random
// sizes, reading in reads of random sizes, and checks the digest.
func stream(t *testing.T, w, r net.Conn, size int, seed uint64) error {
	rng := rand.New(rand.NewPCG(seed, 1))
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	errc := make(chan error, 1)
	go func() {
		for off := 0; off < size; {
			k := min(size-off, 1+rng.IntN(300<<10))
			if _, err := w.Write(data[off : off+k]); err != nil {
				errc <- err
				return
			}
			off += k
		}
		errc <- nil
	}()
	h := sha256.New()
	buf := make([]byte, 200<<10)
	rrng := rand.New(rand.NewPCG(seed, 2))
	for got := 0; got < size; {
		n, err := r.Read(buf[:1+rrng.IntN(len(buf))])
		h.Write(buf[:n])
		got += n
		if err != nil {
			return fmt.Errorf("read after %d bytes: %w", got, err)
		}
	}
	if err := <-errc; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if want := sha256.Sum256(data); !bytes.Equal(h.Sum(nil), want[:]) {
		return errors.New("data differs")
	}
	return nil
}

func TestLargeTransfer(t *testing.T) {
	for _, m := range methods() {
		t.Run(string(m), func(t *testing.T) {
			keys := newKeys(t, m)
			s := startServer(t, ServerConfig{Name: "cloud", Method: m, Keys: anyPeer(keys)})
			c, sc := connect(t, s, s.addr(), Config{Name: "appedge/g1", Method: m, Keys: fixed(keys)})
			if err := stream(t, c, sc, 24<<20, 1); err != nil {
				t.Fatal("client to server:", err)
			}
			if err := stream(t, sc, c, 24<<20, 2); err != nil {
				t.Fatal("server to client:", err)
			}
		})
	}
}

func TestConcurrentReadWrite(t *testing.T) {
	keys := newKeys(t, AES256GCM)
	s := startServer(t, ServerConfig{Name: "edge/g1", Method: AES256GCM, Keys: anyPeer(keys)})
	c, sc := connect(t, s, s.addr(), Config{Name: "alice", Method: AES256GCM, Keys: fixed(keys)})
	var wg sync.WaitGroup
	errs := make([]error, 2)
	wg.Add(2)
	go func() { defer wg.Done(); errs[0] = stream(t, c, sc, 8<<20, 3) }()
	go func() { defer wg.Done(); errs[1] = stream(t, sc, c, 8<<20, 4) }()
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("direction %d: %v", i, err)
		}
	}
}

func TestCleanCloseIsEOF(t *testing.T) {
	keys := newKeys(t, XChaCha20Poly1305)
	s := startServer(t, ServerConfig{Name: "cloud", Method: XChaCha20Poly1305, Keys: anyPeer(keys)})
	c, sc := connect(t, s, s.addr(), Config{Name: "appedge/g1", Method: XChaCha20Poly1305, Keys: fixed(keys)})
	c.Write([]byte("last words"))
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	got, err := readUntilError(t, sc)
	if string(got) != "last words" || err != io.EOF {
		t.Fatalf("read %q, %v; want \"last words\", io.EOF", got, err)
	}
	if _, err := sc.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read after EOF: %v", err)
	}
	if _, err := c.Write([]byte("x")); err == nil || !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after Close: %v; want net.ErrClosed", err)
	}
}

// TestRotationAcceptsOldAndNewKeys: a server holding K1 and K2 (primary)
// accepts a client holding only K1 and one whose primary is K2.
func TestRotationAcceptsOldAndNewKeys(t *testing.T) {
	k1 := newKeys(t, AES256GCM)
	both, err := Rotate(k1, AES256GCM)
	if err != nil {
		t.Fatal(err)
	}
	id1, id2 := primaryID(t, k1), primaryID(t, both)
	if id1 == id2 || both.Len() != 2 {
		t.Fatalf("rotation: %d keys, primary %d then %d", both.Len(), id1, id2)
	}
	s := startServer(t, ServerConfig{Name: "edge/g1", Method: AES256GCM, Keys: anyPeer(both)})
	for _, tc := range []struct {
		name string
		keys *keyset.Handle
		want uint32
	}{{"old-key-only", k1, id1}, {"new-primary", both, id2}} {
		t.Run(tc.name, func(t *testing.T) {
			c, sc := connect(t, s, s.addr(), Config{Name: "client:" + tc.name, Method: AES256GCM, Keys: fixed(tc.keys)})
			if c.KeyID() != tc.want || sc.KeyID() != tc.want {
				t.Errorf("session key %d/%d, want %d", c.KeyID(), sc.KeyID(), tc.want)
			}
			exchange(t, c, sc, []byte("ping"))
			exchange(t, sc, c, []byte("pong"))
		})
	}
}

// TestRotationWhileConnected: rotating the keysets of both sides while a
// link is open keeps it working; the next link uses the new key.
func TestRotationWhileConnected(t *testing.T) {
	var clientKeys, serverKeys atomic.Pointer[keyset.Handle]
	k1 := newKeys(t, XChaCha20Poly1305)
	clientKeys.Store(k1)
	serverKeys.Store(k1)
	s := startServer(t, ServerConfig{Name: "cloud", Method: XChaCha20Poly1305,
		Keys: func(string) (*keyset.Handle, error) { return serverKeys.Load(), nil }})
	cfg := Config{Name: "appedge/g1", Method: XChaCha20Poly1305, Keys: func() *keyset.Handle { return clientKeys.Load() }}
	c, sc := connect(t, s, s.addr(), cfg)
	exchange(t, c, sc, []byte("before"))

	k2, err := Rotate(k1, XChaCha20Poly1305)
	if err != nil {
		t.Fatal(err)
	}
	serverKeys.Store(k2)
	clientKeys.Store(k2)

	exchange(t, c, sc, []byte("after rotation"))
	exchange(t, sc, c, []byte("still here"))
	if err := stream(t, c, sc, 1<<20, 5); err != nil {
		t.Fatal(err)
	}
	if c.KeyID() != primaryID(t, k1) {
		t.Errorf("open link moved to key %d", c.KeyID())
	}
	c2, sc2 := connect(t, s, s.addr(), cfg)
	if c2.KeyID() != primaryID(t, k2) {
		t.Errorf("new link uses key %d, want the new primary %d", c2.KeyID(), primaryID(t, k2))
	}
	exchange(t, c2, sc2, []byte("new key"))
}

// refusal runs a handshake expected to fail and returns both errors.
func refusal(t *testing.T, scfg ServerConfig, ccfg Config) (clientErr, serverErr error) {
	t.Helper()
	s := startServer(t, scfg)
	c, cerr := dial(t, s.addr(), ccfg)
	sc, serr := s.next(t)
	if c != nil || sc != nil {
		t.Fatalf("handshake succeeded: client err %v, server err %v", cerr, serr)
	}
	t.Logf("client: %v", cerr)
	t.Logf("server: %v", serr)
	for _, err := range []error{cerr, serr} {
		if k := fs.KindOf(err); k != fs.Permission {
			t.Errorf("error %q has kind %v, want %v", err, k, fs.Permission)
		}
	}
	return cerr, serr
}

func TestRetiredKeyRefused(t *testing.T) {
	k1 := newKeys(t, AES256GCM)
	both, err := Rotate(k1, AES256GCM)
	if err != nil {
		t.Fatal(err)
	}
	id1 := primaryID(t, k1)
	retired, err := Retire(both, id1)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("key proof failed: key %d was retired from this link", id1)
	cerr, serr := refusal(t,
		ServerConfig{Name: "edge/g1", Method: AES256GCM, Keys: anyPeer(retired)},
		Config{Name: "alice", Method: AES256GCM, Keys: fixed(k1)})
	wantErr(t, cerr, "refused by server: "+want)
	wantErr(t, serr, want, "alice")
	if !errors.Is(cerr, ErrKeyProof) || !errors.Is(serr, ErrKeyProof) {
		t.Errorf("errors do not match ErrKeyProof: %v / %v", cerr, serr)
	}
}

func TestWrongKeyRefused(t *testing.T) {
	t.Run("unknown-key", func(t *testing.T) {
		cerr, serr := refusal(t,
			ServerConfig{Name: "edge/g1", Method: AES256GCM, Keys: anyPeer(newKeys(t, AES256GCM))},
			Config{Name: "alice", Method: AES256GCM, Keys: fixed(newKeys(t, AES256GCM))})
		wantErr(t, cerr, "refused by server: key proof failed: wrong key for this link")
		wantErr(t, serr, "key proof failed: wrong key for this link")
	})
	t.Run("same-id-other-secret", func(t *testing.T) {
		// An impostor key with the server key's ID gets as far as the
		// key proof, which fails.
		real := newKeys(t, AES256GCM)
		fake := withKeyID(t, newKeys(t, AES256GCM), primaryID(t, real))
		cerr, serr := refusal(t,
			ServerConfig{Name: "edge/g1", Method: AES256GCM, Keys: anyPeer(real)},
			Config{Name: "alice", Method: AES256GCM, Keys: fixed(fake)})
		wantErr(t, cerr, "refused by server: key proof failed: wrong key for this link", "did not verify")
		wantErr(t, serr, "key proof failed: wrong key for this link", "did not verify")
	})
}

// withKeyID returns h's one key under another key ID.
func withKeyID(t *testing.T, h *keyset.Handle, id uint32) *keyset.Handle {
	t.Helper()
	ks := insecurecleartextkeyset.KeysetMaterial(h)
	ks.PrimaryKeyId = id
	ks.Key[0].KeyId = id
	var buf bytes.Buffer
	if err := keyset.NewBinaryWriter(&buf).Write(ks); err != nil {
		t.Fatal(err)
	}
	out, err := insecurecleartextkeyset.Read(keyset.NewBinaryReader(&buf))
	if err != nil {
		t.Fatal(err)
	}
	if primaryID(t, out) != id {
		t.Fatal("key ID not changed")
	}
	return out
}

func TestWrongMethodRefused(t *testing.T) {
	cerr, serr := refusal(t,
		ServerConfig{Name: "appedge/g1", Method: XChaCha20Poly1305, Keys: anyPeer(newKeys(t, XChaCha20Poly1305))},
		Config{Name: "edge/g1", Method: AES256GCM, Keys: fixed(newKeys(t, AES256GCM))})
	const want = "method mismatch: peer offered AES256_GCM, this link uses XCHACHA20_POLY1305"
	wantErr(t, cerr, "refused by server: "+want)
	wantErr(t, serr, want)
	if !errors.Is(cerr, ErrMethodMismatch) || !errors.Is(serr, ErrMethodMismatch) {
		t.Errorf("errors do not match ErrMethodMismatch: %v / %v", cerr, serr)
	}
	var re *RefusedError
	if !errors.As(cerr, &re) || re.By != "server" {
		t.Errorf("client error %v is not a RefusedError by the server", cerr)
	}
}

func TestUnknownPeerRefused(t *testing.T) {
	keys := newKeys(t, AES256GCM)
	cerr, serr := refusal(t,
		ServerConfig{Name: "edge/g1", Method: AES256GCM, Keys: func(peer string) (*keyset.Handle, error) {
			if peer == "alice" {
				return keys, nil
			}
			return nil, errors.New("no keyset file")
		}},
		Config{Name: "mallory", Method: AES256GCM, Keys: fixed(keys)})
	wantErr(t, cerr, `refused by server: unknown peer "mallory"`)
	wantErr(t, serr, `unknown peer "mallory"`, "no keyset file")
	if !errors.Is(cerr, ErrUnknownPeer) || !errors.Is(serr, ErrUnknownPeer) {
		t.Errorf("errors do not match ErrUnknownPeer: %v / %v", cerr, serr)
	}
}

func TestConfigErrors(t *testing.T) {
	aesKeys := newKeys(t, AES256GCM)
	s := startServer(t, ServerConfig{Name: "edge/g1", Method: AES256GCM, Keys: anyPeer(aesKeys)})
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"keyset-method", Config{Name: "a", Method: XChaCha20Poly1305, Keys: fixed(aesKeys)}, "the keyset derives AES256_GCM keys but the link is configured for XCHACHA20_POLY1305"},
		{"no-name", Config{Method: AES256GCM, Keys: fixed(aesKeys)}, "name"},
		{"bad-method", Config{Name: "a", Method: "ROT13", Keys: fixed(aesKeys)}, `unknown method "ROT13"`},
		{"no-keys", Config{Name: "a", Method: AES256GCM}, "no Keys"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := dial(t, s.addr(), tc.cfg)
			wantErr(t, err, tc.want)
			if fs.KindOf(err) != fs.Invalid {
				t.Errorf("kind %v, want %v", fs.KindOf(err), fs.Invalid)
			}
			// The server sees the connection drop without a hello.
			if _, serr := s.next(t); serr == nil {
				t.Error("server handshake succeeded")
			}
		})
	}
}

func TestHandshakeTimeout(t *testing.T) {
	ln := listen(t)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			io.Copy(io.Discard, c) // never answers
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := Dial(ctx, "tcp", ln.Addr().String(), Config{Name: "a", Method: AES256GCM, Keys: fixed(newKeys(t, AES256GCM))})
	t.Log(err)
	if err == nil || fs.KindOf(err) != fs.Timeout || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error %v (kind %v), want a timeout", err, fs.KindOf(err))
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("took %v", d)
	}
}

// TestDeadlinesAfterHandshake: the handshake's deadline does not outlive
// it, and a Read that times out (even inside a frame) can be retried.
func TestDeadlinesAfterHandshake(t *testing.T) {
	keys := newKeys(t, AES256GCM)
	s := startServer(t, ServerConfig{Name: "edge/g1", Method: AES256GCM, Keys: anyPeer(keys)})
	// Deliver the first data frame in two halves, 300 ms apart.
	p := newProxy(t, s.addr(), func(_ int, dir byte, i int, rec []byte) *action {
		if dir == 'c' && i == 2 {
			return &action{out: [][]byte{rec[:len(rec)/2], rec[len(rec)/2:]}, pause: 300 * time.Millisecond}
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c, err := Dial(ctx, "tcp", p.addr(), Config{Name: "alice", Method: AES256GCM, Keys: fixed(keys)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc, err := s.next(t)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // past the dial context's deadline

	msg := bytes.Repeat([]byte("half a frame "), 1000)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	sc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	buf := make([]byte, len(msg))
	n, err := sc.Read(buf)
	if n != 0 || !isTimeoutErr(err) {
		t.Fatalf("read: %d, %v; want a timeout", n, err)
	}
	sc.SetReadDeadline(time.Now().Add(testTimeout))
	if _, err := io.ReadFull(sc, buf); err != nil || !bytes.Equal(buf, msg) {
		t.Fatalf("read after timeout: %v (equal %v)", err, bytes.Equal(buf, msg))
	}
	exchange(t, sc, c, []byte("reply"))

	// A write that times out before sending anything may be retried.
	sc.SetWriteDeadline(time.Now().Add(-time.Second))
	if n, err := sc.Write([]byte("lost")); n != 0 || !isTimeoutErr(err) {
		t.Fatalf("write past the deadline: %d, %v", n, err)
	}
	sc.SetWriteDeadline(time.Now().Add(testTimeout))
	exchange(t, sc, c, []byte("retried"))
}

// lockedBuffer is a log destination for a listener under test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestListener(t *testing.T) {
	keys := newKeys(t, AES256GCM)
	var logs lockedBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	inner := listen(t)
	ln := NewListener(inner, ServerConfig{Name: "edge/g1", Method: AES256GCM, Keys: anyPeer(keys),
		HandshakeTimeout: 2 * time.Second}, log)
	defer ln.Close()
	addr := ln.Addr().String()

	// A peer that connects and says nothing does not block Accept.
	slow, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	// A peer with the wrong method is refused and never accepted.
	if _, err := dial(t, addr, Config{Name: "bob", Method: XChaCha20Poly1305, Keys: fixed(newKeys(t, XChaCha20Poly1305))}); err == nil {
		t.Fatal("wrong method accepted")
	}

	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	d := Dialer{Config: Config{Name: "alice", Method: AES256GCM, Keys: fixed(keys)}, Timeout: testTimeout}
	nc, err := d.DialContext(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	c := nc.(*Conn)
	var sc *Conn
	select {
	case a := <-accepted:
		sc = a.(*Conn)
	case <-time.After(1500 * time.Millisecond):
		t.Fatal("Accept blocked behind a slow handshake")
	}
	if sc.Peer() != "alice" {
		t.Fatalf("accepted %q, want alice", sc.Peer())
	}
	exchange(t, c, sc, []byte("hello"))

	// Both failures end up in the log.
	for i := 0; ; i++ {
		l := logs.String()
		if strings.Contains(l, "method mismatch") && strings.Contains(l, "timed out") {
			break
		}
		if i == 100 {
			t.Fatalf("log lacks the failed handshakes:\n%s", l)
		}
		time.Sleep(50 * time.Millisecond)
	}

	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v", err)
	}
	exchange(t, sc, c, []byte("accepted links outlive the listener"))
}
