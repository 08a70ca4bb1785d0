package link

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"

	"strata/fs"
)

// Records on a link, per direction: 0 hello, 1 finished, 2 data frame 1,
// 3 data frame 2, ...

// TestTamperClientFrames alters the client's frames on the way to the
// server; the server's Read must fail, naming the cause, after returning
// exactly the frames that came before the damage.
func TestTamperClientFrames(t *testing.T) {
	msgs := []string{"one:alpha\n", "two:bravo\n", "three:charlie\n"}
	for _, tc := range []struct {
		name  string
		edit  func() editFunc
		got   string   // what the server may read before the error
		want  []string // in the error
		is    error
		kind  fs.Kind
		close bool // whether the server's link is torn down
	}{
		{
			name: "flipped-bit",
			edit: onFrame(3, func(rec []byte) *action {
				rec = bytes.Clone(rec)
				rec[len(rec)/2] ^= 0x10
				return &action{out: [][]byte{rec}}
			}),
			got: msgs[0], want: []string{"frame 2 failed authentication"}, is: ErrFrameAuth, kind: fs.IO,
		},
		{
			name: "flipped-type",
			edit: onFrame(3, func(rec []byte) *action {
				rec = bytes.Clone(rec)
				rec[0] = recClose // a data frame passed off as the close frame
				return &action{out: [][]byte{rec}}
			}),
			got: msgs[0], want: []string{"frame 2 failed authentication"}, is: ErrFrameAuth, kind: fs.IO,
		},
		{
			name: "replay",
			edit: onFrame(2, func(rec []byte) *action { return &action{out: [][]byte{rec, rec}} }),
			got:  msgs[0], want: []string{"frame 2 failed authentication"}, is: ErrFrameAuth, kind: fs.IO,
		},
		{
			name: "drop",
			edit: onFrame(2, func(rec []byte) *action { return &action{} }),
			got:  "", want: []string{"frame 1 failed authentication"}, is: ErrFrameAuth, kind: fs.IO,
		},
		{
			name: "reorder",
			edit: func() editFunc {
				var held []byte
				return func(_ int, dir byte, i int, rec []byte) *action {
					switch {
					case dir == 'c' && i == 2:
						held = rec
						return &action{}
					case dir == 'c' && i == 3:
						return &action{out: [][]byte{rec, held}}
					}
					return nil
				}
			},
			got: "", want: []string{"frame 1 failed authentication"}, is: ErrFrameAuth, kind: fs.IO,
		},
		{
			name: "truncate-mid-frame",
			edit: onFrame(3, func(rec []byte) *action { return &action{out: [][]byte{rec[:len(rec)/2]}, cut: true} }),
			got:  msgs[0], want: []string{"link truncated: connection ended inside frame 2"}, is: ErrTruncated, kind: fs.Unavailable,
		},
		{
			name: "truncate-between-frames",
			edit: onFrame(3, func(rec []byte) *action { return &action{cut: true} }),
			got:  msgs[0], want: []string{"link truncated: connection ended without close frame"}, is: ErrTruncated, kind: fs.Unavailable,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			keys := newKeys(t, AES256GCM)
			s := startServer(t, ServerConfig{Name: "edge/g1", Method: AES256GCM, Keys: anyPeer(keys)})
			p := newProxy(t, s.addr(), tc.edit())
			c, sc := connect(t, s, p.addr(), Config{Name: "alice", Method: AES256GCM, Keys: fixed(keys)})
			for _, m := range msgs {
				c.Write([]byte(m)) // may fail once the proxy cuts
			}
			got, err := readUntilError(t, sc)
			t.Logf("server: %v", err)
			if string(got) != tc.got {
				t.Errorf("server read %q before the error, want %q", got, tc.got)
			}
			wantErr(t, err, tc.want...)
			if !errors.Is(err, tc.is) || fs.KindOf(err) != tc.kind {
				t.Errorf("error %v: is %v: %v, kind %v (want %v)", err, tc.is, errors.Is(err, tc.is), fs.KindOf(err), tc.kind)
			}
			if _, again := sc.Read(make([]byte, 10)); again == nil || again.Error() != err.Error() {
				t.Errorf("second read: %v; want the same error", again)
			}
			if _, werr := sc.Write([]byte("x")); werr == nil {
				t.Error("write on a torn-down link succeeded")
			}
		})
	}
}

// onFrame makes an editor that applies f to record i of the client's
// direction and passes everything else.
func onFrame(i int, f func(rec []byte) *action) func() editFunc {
	return func() editFunc {
		return func(_ int, dir byte, j int, rec []byte) *action {
			if dir == 'c' && j == i {
				return f(rec)
			}
			return nil
		}
	}
}

// TestTamperReflection sends the server's own frame back to it.
func TestTamperReflection(t *testing.T) {
	keys := newKeys(t, XChaCha20Poly1305)
	s := startServer(t, ServerConfig{Name: "cloud", Method: XChaCha20Poly1305, Keys: anyPeer(keys)})
	p := newProxy(t, s.addr(), func(_ int, dir byte, i int, rec []byte) *action {
		if dir == 's' && i == 2 {
			return &action{out: [][]byte{rec}, back: [][]byte{rec}}
		}
		return nil
	})
	c, sc := connect(t, s, p.addr(), Config{Name: "appedge/g1", Method: XChaCha20Poly1305, Keys: fixed(keys)})
	msg := []byte("Rread: the server's own words")
	if _, err := sc.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("client read %q, %v", got, err)
	}
	echoed, err := readUntilError(t, sc)
	if len(echoed) != 0 {
		t.Errorf("server read its own reflected bytes %q", echoed)
	}
	wantErr(t, err, "frame 1 failed authentication")
}

// TestTamperServerFinished damages the server's key proof: the client
// refuses, and the server, which had finished, learns why on its first
// Read.
func TestTamperServerFinished(t *testing.T) {
	keys := newKeys(t, AES256GCM)
	s := startServer(t, ServerConfig{Name: "edge/g1", Method: AES256GCM, Keys: anyPeer(keys)})
	p := newProxy(t, s.addr(), func(_ int, dir byte, i int, rec []byte) *action {
		if dir == 's' && i == 1 {
			rec = bytes.Clone(rec)
			rec[len(rec)-1] ^= 1
			return &action{out: [][]byte{rec}}
		}
		return nil
	})
	_, cerr := dial(t, p.addr(), Config{Name: "alice", Method: AES256GCM, Keys: fixed(keys)})
	wantErr(t, cerr, "key proof failed: the server's proof did not verify")
	sc, serr := s.next(t)
	if serr != nil {
		t.Fatalf("server: %v", serr)
	}
	got, err := readUntilError(t, sc)
	t.Logf("server: %v", err)
	if len(got) != 0 {
		t.Errorf("server read %q", got)
	}
	wantErr(t, err, "refused by client: key proof failed", "(unauthenticated)")
	if !errors.Is(err, ErrKeyProof) || fs.KindOf(err) != fs.Permission {
		t.Errorf("error %v: kind %v", err, fs.KindOf(err))
	}
}

// TestTamperSplice replaces a frame of one session with the frame of the
// same number from another session under the same keyset.
func TestTamperSplice(t *testing.T) {
	keys := newKeys(t, AES256GCM)
	s := startServer(t, ServerConfig{Name: "edge/g1", Method: AES256GCM, Keys: anyPeer(keys)})
	var mu sync.Mutex
	var saved []byte
	p := newProxy(t, s.addr(), func(conn int, dir byte, i int, rec []byte) *action {
		if dir != 'c' || i != 2 {
			return nil
		}
		mu.Lock()
		defer mu.Unlock()
		switch conn {
		case 0:
			saved = bytes.Clone(rec)
		case 1:
			return &action{out: [][]byte{saved}}
		}
		return nil
	})
	cfg := Config{Name: "alice", Method: AES256GCM, Keys: fixed(keys)}
	a, sa := connect(t, s, p.addr(), cfg)
	exchange(t, a, sa, []byte("session A, frame 1"))
	b, sb := connect(t, s, p.addr(), cfg)
	if bytes.Equal(a.SessionID(), b.SessionID()) {
		t.Fatal("two sessions share an ID")
	}
	b.Write([]byte("session B, frame 1"))
	got, err := readUntilError(t, sb)
	if len(got) != 0 {
		t.Errorf("session B read %q", got)
	}
	wantErr(t, err, "frame 1 failed authentication")
}

// distinctive makes plaintext that is easy to spot: no 16-byte window of
// it is likely to occur by chance.
func distinctive(size int) []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < size; i++ {
		fmt.Fprintf(&b, "strata secret record %08d: the quick brown fox jumps over the lazy dog\n", i)
	}
	return b.Bytes()[:size]
}

// leakAt returns the offset in capture of the first 16-byte window of
// plaintext, or -1.
func leakAt(capture, plaintext []byte) int {
	const w = 16
	windows := make(map[[w]byte]struct{}, len(plaintext))
	for i := 0; i+w <= len(plaintext); i++ {
		windows[[w]byte(plaintext[i:i+w])] = struct{}{}
	}
	for i := 0; i+w <= len(capture); i++ {
		if _, ok := windows[[w]byte(capture[i:i+w])]; ok {
			return i
		}
	}
	return -1
}

// TestCaptureHasNoPlaintext records every byte crossing a link while
// distinctive plaintext goes both ways, and looks for any 16 bytes of it.
// The same check on a plain TCP stream must find it.
func TestCaptureHasNoPlaintext(t *testing.T) {
	plaintext := distinctive(64 << 10)
	const rounds = 8

	t.Run("control-plain-tcp", func(t *testing.T) {
		ln := listen(t)
		done := make(chan int64, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				done <- -1
				return
			}
			defer c.Close()
			n, _ := io.Copy(io.Discard, c)
			done <- n
		}()
		p := newRawProxy(t, ln.Addr().String())
		c, err := net.Dial("tcp", p.addr())
		if err != nil {
			t.Fatal(err)
		}
		c.Write(plaintext)
		c.Close()
		if n := <-done; n != int64(len(plaintext)) {
			t.Fatalf("server got %d bytes", n)
		}
		if leakAt(p.capture(), plaintext) < 0 {
			t.Fatal("the check misses plaintext in a plain TCP stream")
		}
	})

	for _, m := range methods() {
		t.Run(string(m), func(t *testing.T) {
			keys := newKeys(t, m)
			s := startServer(t, ServerConfig{Name: "edge/g1", Method: m, Keys: anyPeer(keys)})
			p := newProxy(t, s.addr(), nil)
			c, sc := connect(t, s, p.addr(), Config{Name: "alice", Method: m, Keys: fixed(keys)})
			for _, dir := range [][2]*Conn{{c, sc}, {sc, c}} {
				go func() {
					for range rounds {
						dir[0].Write(plaintext)
					}
				}()
				got := make([]byte, rounds*len(plaintext))
				if _, err := io.ReadFull(dir[1], got); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, bytes.Repeat(plaintext, rounds)) {
					t.Fatal("transfer corrupted")
				}
			}
			c.Close()
			if _, err := readUntilError(t, sc); err != io.EOF {
				t.Fatalf("server: %v, want io.EOF", err)
			}
			capture := p.capture()
			if len(capture) < 2*rounds*len(plaintext) {
				t.Fatalf("captured only %d bytes", len(capture))
			}
			if i := leakAt(capture, plaintext); i >= 0 {
				t.Fatalf("plaintext visible at offset %d of the capture: %q", i, capture[i:i+16])
			}
			for _, s := range []string{"alice", "edge/g1", string(m), "strata-link/1"} {
				if !bytes.Contains(capture, []byte(s)) {
					t.Errorf("the hello's %q is not in the capture; is the capture complete?", s)
				}
			}
			if strings.Contains(string(capture), "strata secret record") {
				t.Fatal("plaintext in capture")
			}
		})
	}
}
