package link

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tink-crypto/tink-go/v2/keyset"
)

// testTimeout bounds every wait in the tests.
const testTimeout = 10 * time.Second

func newKeys(t testing.TB, m Method) *keyset.Handle {
	t.Helper()
	h, err := NewKeyset(m)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func fixed(h *keyset.Handle) func() *keyset.Handle { return func() *keyset.Handle { return h } }

func anyPeer(h *keyset.Handle) func(string) (*keyset.Handle, error) {
	return func(string) (*keyset.Handle, error) { return h, nil }
}

func primaryID(t testing.TB, h *keyset.Handle) uint32 {
	t.Helper()
	id, err := primaryKeyID(h)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

type result struct {
	c   *Conn
	err error
}

// testServer accepts TCP connections and runs the server handshake on
// each, delivering the results in order of completion.
type testServer struct {
	ln  net.Listener
	res chan result
}

func startServer(t testing.TB, cfg ServerConfig) *testServer {
	t.Helper()
	s := &testServer{ln: listen(t), res: make(chan result, 16)}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range 64 {
			raw, err := s.ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
				defer cancel()
				c, err := Server(ctx, raw, cfg)
				if c != nil {
					t.Cleanup(func() { c.Close() })
				}
				s.res <- result{c, err}
			}()
		}
	}()
	t.Cleanup(func() { s.ln.Close(); wg.Wait() })
	return s
}

func (s *testServer) addr() string { return s.ln.Addr().String() }

// next waits for the next server-side handshake result.
func (s *testServer) next(t testing.TB) (*Conn, error) {
	t.Helper()
	select {
	case r := <-s.res:
		return r.c, r.err
	case <-time.After(testTimeout):
		t.Fatal("server handshake did not finish")
		return nil, nil
	}
}

func dial(t testing.TB, addr string, cfg Config) (*Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	c, err := Dial(ctx, "tcp", addr, cfg)
	if c != nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

// connect makes one link through addr (the server's, or a proxy's) and
// fails the test if either side fails.
func connect(t testing.TB, s *testServer, addr string, cfg Config) (client, server *Conn) {
	t.Helper()
	c, cerr := dial(t, addr, cfg)
	sc, serr := s.next(t)
	if cerr != nil || serr != nil {
		t.Fatalf("handshake failed: client: %v; server: %v", cerr, serr)
	}
	for _, x := range []*Conn{c, sc} {
		x.SetDeadline(time.Now().Add(testTimeout))
	}
	return c, sc
}

// readUntilError reads until an error, returning what arrived before it.
func readUntilError(t testing.TB, c net.Conn) ([]byte, error) {
	t.Helper()
	var got []byte
	buf := make([]byte, 32<<10)
	for range 100000 {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			return got, err
		}
	}
	t.Fatal("reader never saw an error")
	return nil, nil
}

func wantErr(t testing.TB, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; want one containing %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Fatalf("error %q does not contain %q", err, p)
		}
	}
}

// action is what the proxy does with one record.
type action struct {
	out   [][]byte      // sent on, in order, instead of the record
	back  [][]byte      // sent back to the record's sender
	pause time.Duration // between the pieces of out
	cut   bool          // afterwards, close both connections
}

// editFunc decides the fate of record i (0 is the hello) of connection
// conn going in direction dir ('c' client to server, 's' back). nil
// forwards the record unchanged.
type editFunc func(conn int, dir byte, i int, rec []byte) *action

// proxy relays TCP connections record by record, letting a test alter
// the stream and recording every byte that crosses.
type proxy struct {
	ln     net.Listener
	target string
	edit   editFunc
	raw    bool // relay bytes without parsing records (for a plain TCP control)

	mu       sync.Mutex
	captured bytes.Buffer
	conns    int
	wg       sync.WaitGroup
}

func newProxy(t testing.TB, target string, edit editFunc) *proxy {
	t.Helper()
	return startProxy(t, &proxy{ln: listen(t), target: target, edit: edit})
}

// newRawProxy relays and records bytes without knowing about records.
func newRawProxy(t testing.TB, target string) *proxy {
	t.Helper()
	return startProxy(t, &proxy{ln: listen(t), target: target, raw: true})
}

func startProxy(t testing.TB, p *proxy) *proxy {
	p.wg.Add(1)
	go p.run()
	t.Cleanup(func() { p.ln.Close(); p.wg.Wait() })
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) capture() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return bytes.Clone(p.captured.Bytes())
}

func (p *proxy) run() {
	defer p.wg.Done()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range 64 {
		a, err := p.ln.Accept()
		if err != nil {
			return
		}
		b, err := net.Dial("tcp", p.target)
		if err != nil {
			a.Close()
			return
		}
		conns = append(conns, a, b)
		p.mu.Lock()
		n := p.conns
		p.conns++
		p.mu.Unlock()
		var amu, bmu sync.Mutex
		p.wg.Add(2)
		go p.relay(n, 'c', a, b, &amu, &bmu)
		go p.relay(n, 's', b, a, &bmu, &amu)
	}
}

// relay copies records from src to dst until either ends.
func (p *proxy) relay(n int, dir byte, src, dst net.Conn, srcMu, dstMu *sync.Mutex) {
	defer p.wg.Done()
	defer func() {
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
	}()
	send := func(c net.Conn, mu *sync.Mutex, b []byte) {
		mu.Lock()
		defer mu.Unlock()
		c.Write(b)
	}
	for i := 0; i < 1<<20; i++ {
		var rec []byte
		if p.raw {
			buf := make([]byte, 64<<10)
			k, err := src.Read(buf)
			if err != nil {
				return
			}
			rec = buf[:k]
		} else {
			var h [headerSize]byte
			if _, err := io.ReadFull(src, h[:]); err != nil {
				return
			}
			rec = make([]byte, headerSize+headerLen(h[:]))
			copy(rec, h[:])
			if _, err := io.ReadFull(src, rec[headerSize:]); err != nil {
				return
			}
		}
		p.mu.Lock()
		p.captured.Write(rec)
		p.mu.Unlock()
		var a *action
		if p.edit != nil && !p.raw {
			a = p.edit(n, dir, i, rec)
		}
		if a == nil {
			send(dst, dstMu, rec)
			continue
		}
		for j, b := range a.out {
			if j > 0 && a.pause > 0 {
				time.Sleep(a.pause)
			}
			send(dst, dstMu, b)
		}
		for _, b := range a.back {
			send(src, srcMu, b)
		}
		if a.cut {
			src.Close()
			dst.Close()
			return
		}
	}
}

// isTimeoutErr reports a deadline error as net.Conn promises it.
func isTimeoutErr(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) && errors.As(err, &ne) && ne.Timeout()
}
