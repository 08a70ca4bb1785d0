package ninep

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"9fans.net/go/plan9"

	"strata/fs"
)

// A peer that sends requests but never reads the replies is dropped once
// the replies make no progress for WriteTimeout, and its connection's
// goroutines end.
func TestStalledReaderIsDropped(t *testing.T) {
	var srv *Server
	root := plan9TestTree(t, map[string]string{"big": strings.Repeat("x", 1<<20)})
	addr := plan9Serve(t, root, func(s *Server) {
		s.WriteTimeout = 300 * time.Millisecond
		srv = s
	})
	rc := plan9DialVersion(t, addr, MaxMsize9P)
	rc.ok(&plan9.Fcall{Type: plan9.Tattach, Tag: 1, Fid: 0, Afid: plan9.NOFID, Uname: "tester"})
	rc.ok(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 0, Newfid: 1, Wname: []string{"big"}})
	rc.ok(&plan9.Fcall{Type: plan9.Topen, Tag: 1, Fid: 1, Mode: plan9.OREAD})
	conns := func() int {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return len(srv.conns)
	}
	if conns() != 1 {
		t.Fatalf("%d connections tracked, want 1", conns())
	}
	// About 200 MB of replies that nobody reads: more than any socket
	// buffers hold. Sending stops when the server drops us.
	for i := range 3000 {
		if err := rc.trySend(&plan9.Fcall{Type: plan9.Tread, Tag: uint16(i + 2), Fid: 1, Count: MaxMsize9P - 24}); err != nil {
			break
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for conns() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the stalled connection is still served after 20s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The server still serves others.
	_, fsys := plan9Mount(t, addr, "other")
	if _, err := fsys.Stat("big"); err != nil {
		t.Fatalf("stat after the drop: %v", err)
	}
}

// Attach is given the connection as accepted (here a *net.TCPConn), not a
// wrapper of the server's, in both dialects, so that it can tell who the
// peer is.
func TestAttachSeesAcceptedConn(t *testing.T) {
	root := plan9TestTree(t, map[string]string{"f": "x"})
	seen := make(chan net.Conn, 2)
	addr := plan9Serve(t, root, func(s *Server) {
		s.Attach = func(_ context.Context, c net.Conn) (fs.Dir, error) {
			seen <- c
			return root, nil
		}
	})
	plan9Mount(t, addr, "tester")
	dialL(t, addr, 8192)
	for i := range 2 {
		if c := <-seen; reflect.TypeOf(c) != reflect.TypeOf(&net.TCPConn{}) {
			t.Errorf("attach %d of 2 (one per dialect): Attach got a %T, want *net.TCPConn", i+1, c)
		}
	}
}

// A reply written through progressConn reaches a reader that is slow but
// moves a piece every timeout, and fails for one that trickles less.
func TestProgressConn(t *testing.T) {
	const timeout = 300 * time.Millisecond
	pair := func(t *testing.T) (progressConn, net.Conn) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		r, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		w, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close(); w.Close() })
		return progressConn{Conn: w, timeout: timeout}, r
	}
	// read reads chunk bytes every tick until it has want bytes, fails,
	// or has read for 5 seconds.
	read := func(r net.Conn, chunk, want int, tick time.Duration) chan int {
		got := make(chan int, 1)
		go func() {
			buf, total := make([]byte, chunk), 0
			for end := time.Now().Add(5 * time.Second); total < want && time.Now().Before(end); {
				n, err := io.ReadFull(r, buf[:min(chunk, want-total)])
				total += n
				if err != nil {
					break
				}
				time.Sleep(tick)
			}
			got <- total
		}()
		return got
	}
	t.Run("live", func(t *testing.T) {
		w, r := pair(t)
		const size = 16 << 20
		got := read(r, 1<<20, size, 100*time.Millisecond)
		if n, err := w.Write(make([]byte, size)); n != size || err != nil {
			t.Fatalf("write to a slow reader: %d of %d bytes, %v", n, size, err)
		}
		if n := <-got; n != size {
			t.Errorf("the reader got %d of %d bytes", n, size)
		}
	})
	t.Run("trickle", func(t *testing.T) {
		w, r := pair(t)
		const size = 64 << 20
		read(r, 4<<10, size, 50*time.Millisecond)
		start := time.Now()
		n, err := w.Write(make([]byte, size))
		if !errors.Is(err, os.ErrDeadlineExceeded) || n >= size {
			t.Fatalf("write to a trickling reader: %d of %d bytes, %v; want a deadline error", n, size, err)
		}
		if took := time.Since(start); took > 4*time.Second {
			t.Errorf("the trickling reader was dropped after %s", took)
		}
	})
}
