package shape

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// echoServer answers every connection with what it reads, until EOF, then
// closes.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

func start(t *testing.T, cfg Config) *Proxy {
	t.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	p, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return c.(*net.TCPConn)
}

// TestDelay: a round trip through the line takes at least twice the delay,
// bytes arrive whole and in order, and a half close passes through after
// the bytes before it.
func TestDelay(t *testing.T) {
	const delay = 50 * time.Millisecond
	p := start(t, Config{Target: echoServer(t), Delay: delay})
	c := dial(t, p.Addr())
	buf := make([]byte, 5)
	for i := 0; i < 3; i++ {
		start := time.Now()
		if _, err := c.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		if rtt := time.Since(start); rtt < 2*delay {
			t.Errorf("round trip %d took %s, less than twice the delay", i, rtt)
		}
		if string(buf) != "hello" {
			t.Errorf("echo %q", buf)
		}
	}
	data := make([]byte, 1<<20)
	rand.Read(data)
	go func() {
		c.Write(data)
		c.CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Errorf("1 MiB through the line came back as %d bytes, different", len(got))
	}
}

// TestRate: a rate limit holds a transfer to about that rate.
func TestRate(t *testing.T) {
	const rate = 64 << 10
	p := start(t, Config{Target: echoServer(t), Rate: rate})
	c := dial(t, p.Addr())
	data := make([]byte, 64<<10)
	start := time.Now()
	go func() {
		c.Write(data)
		c.CloseWrite()
	}()
	n, err := io.Copy(io.Discard, c)
	if err != nil || n != int64(len(data)) {
		t.Fatalf("copied %d bytes: %v", n, err)
	}
	// 64 KiB each way at 64 KiB/s: the answer cannot all be back in much
	// less than a second.
	if took := time.Since(start); took < 900*time.Millisecond {
		t.Errorf("64 KiB at %d B/s took %s", rate, took)
	}
}

// TestClose: Close cuts open connections; a dead target closes the
// client's connection; bad configurations are refused.
func TestClose(t *testing.T) {
	p := start(t, Config{Target: echoServer(t), Delay: time.Millisecond})
	c := dial(t, p.Addr())
	c.Write([]byte("x"))
	io.ReadFull(c, make([]byte, 1))
	p.Close()
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Errorf("a connection outlived Close")
	}

	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	q := start(t, Config{Target: dead})
	c2 := dial(t, q.Addr())
	if _, err := c2.Read(make([]byte, 1)); err == nil {
		t.Errorf("a connection to a dead target stayed open")
	}

	for _, cfg := range []Config{
		{Listen: "127.0.0.1:0", Target: dead, Delay: -1},
		{Listen: "127.0.0.1:0", Target: dead, Delay: time.Minute},
		{Listen: "127.0.0.1:0", Target: dead, Rate: -5},
		{Listen: "127.0.0.1:0"},
	} {
		if _, err := Start(context.Background(), cfg); err == nil || !strings.HasPrefix(err.Error(), "shape: ") {
			t.Errorf("%+v: %v, want a refusal", cfg, err)
		}
	}
}

// TestSetDelayAndRate: the delay and the rate change while connections are
// open, bad values are refused, and Clear restores the Config's.
func TestSetDelayAndRate(t *testing.T) {
	p := start(t, Config{Target: echoServer(t)})
	c := dial(t, p.Addr())
	rtt := func() time.Duration {
		t.Helper()
		start := time.Now()
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
			t.Fatal(err)
		}
		return time.Since(start)
	}
	rtt()
	if err := p.SetDelay(100 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if d := rtt(); d < 200*time.Millisecond {
		t.Errorf("a round trip at 100ms each way took %s", d)
	}
	p.Clear()
	if d := rtt(); d >= 200*time.Millisecond {
		t.Errorf("a round trip after Clear took %s", d)
	}
	if err := p.SetRate(64 << 10); err != nil {
		t.Fatal(err)
	}
	data, back := make([]byte, 32<<10), make([]byte, 32<<10)
	start := time.Now()
	go c.Write(data)
	if _, err := io.ReadFull(c, back); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 400*time.Millisecond {
		t.Errorf("32 KiB at 64 KiB/s took %s", took)
	}
	p.SetRate(0)
	start = time.Now()
	go c.Write(data)
	if _, err := io.ReadFull(c, back); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took >= 400*time.Millisecond {
		t.Errorf("32 KiB with the rate lifted took %s", took)
	}
	for _, err := range []error{p.SetDelay(-1), p.SetDelay(time.Hour), p.SetRate(-1)} {
		if err == nil || !strings.HasPrefix(err.Error(), "shape: ") {
			t.Errorf("bad value: %v, want a refusal", err)
		}
	}
}

// TestBlackhole: bytes vanish both ways, the connection stays open (no
// FIN, no RST, not even the half close the client sends), a new
// connection is accepted and its bytes vanish too; once lifted, the held
// end of stream passes and new connections work.
func TestBlackhole(t *testing.T) {
	p := start(t, Config{Target: echoServer(t)})
	c := dial(t, p.Addr())
	buf := make([]byte, 1)
	c.Write([]byte("a"))
	if _, err := io.ReadFull(c, buf); err != nil || buf[0] != 'a' {
		t.Fatalf("before: %q %v", buf, err)
	}
	p.Blackhole(true)
	silent := func(c *net.TCPConn, what string) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, err := c.Read(buf)
		var ne net.Error
		if n != 0 || !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("%s: read %d bytes, %v; want silence", what, n, err)
		}
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
	}
	if _, err := c.Write([]byte("b")); err != nil {
		t.Fatal(err)
	}
	silent(c, "open connection")
	c2 := dial(t, p.Addr())
	c2.Write([]byte("c"))
	silent(c2, "new connection")
	// The echo server closes at EOF; the half close must not reach it.
	c.CloseWrite()
	silent(c, "after a half close")
	if st := p.Stats(); st.Dropped < 2 || st.Open != 2 || st.Resets != 0 {
		t.Errorf("stats in the blackhole: %+v", st)
	}
	p.Blackhole(false)
	if _, err := c.Read(buf); err != io.EOF {
		t.Errorf("the held end of stream: %v, want EOF", err)
	}
	c3 := dial(t, p.Addr())
	c3.Write([]byte("d"))
	if _, err := io.ReadFull(c3, buf); err != nil || buf[0] != 'd' {
		t.Errorf("after the blackhole: %q %v", buf, err)
	}
}

// sink accepts connections and reports, for each, how many bytes it read
// before the error that ended it. With send > 0 it waits for one byte
// from each connection, then writes that many bytes to it instead.
func sink(t *testing.T, send int) (string, chan sinkEnd) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ends := make(chan sinkEnd, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				if send > 0 {
					// The client's first byte says its dial is done: an RST
					// that beat the dial's completion would fail the dial.
					_, err := c.Read(make([]byte, 1))
					if err == nil {
						_, err = c.Write(make([]byte, send))
					}
					if err == nil {
						_, err = c.Read(make([]byte, 1))
					}
					ends <- sinkEnd{0, err}
					return
				}
				n, err := io.Copy(io.Discard, c)
				if err == nil {
					err = io.EOF
				}
				ends <- sinkEnd{n, err}
			}()
		}
	}()
	return ln.Addr().String(), ends
}

type sinkEnd struct {
	n   int64
	err error
}

func isReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }

// TestReset: every open connection is cut with an RST on both sides, and
// new connections work afterwards.
func TestReset(t *testing.T) {
	target, ends := sink(t, 0)
	p := start(t, Config{Target: target, Delay: time.Millisecond})
	c1, c2 := dial(t, p.Addr()), dial(t, p.Addr())
	c1.Write([]byte("x"))
	c2.Write([]byte("y"))
	for p.Stats().Passed < 2 {
		time.Sleep(5 * time.Millisecond)
	}
	if n := p.Reset(); n != 2 {
		t.Errorf("Reset cut %d connections, want 2", n)
	}
	for i, c := range []*net.TCPConn{c1, c2} {
		if _, err := c.Read(make([]byte, 1)); !isReset(err) {
			t.Errorf("client %d: %v, want a reset", i, err)
		}
		if e := <-ends; !isReset(e.err) {
			t.Errorf("target side: %v, want a reset", e.err)
		}
	}
	if st := p.Stats(); st.Resets != 2 {
		t.Errorf("stats: %+v", st)
	}
	c3 := dial(t, p.Addr())
	c3.Write([]byte("z"))
	c3.CloseWrite()
	if e := <-ends; e.n != 1 || e.err != io.EOF {
		t.Errorf("after Reset: %d bytes, %v", e.n, e.err)
	}
}

// TestResetAfter: a large write is cut with an RST after the given number
// of bytes, in the direction asked, once; Clear disarms a pending one.
func TestResetAfter(t *testing.T) {
	const n = 100_000
	t.Run("to-target", func(t *testing.T) {
		target, ends := sink(t, 0)
		p := start(t, Config{Target: target})
		fired := p.ResetAfter(ToTarget, n)
		c := dial(t, p.Addr())
		_, werr := c.Write(make([]byte, 1<<20))
		_, rerr := c.Read(make([]byte, 1))
		if !isReset(werr) && !isReset(rerr) {
			t.Errorf("the writer saw %v, then %v; want a reset", werr, rerr)
		}
		e := <-ends
		if e.n == 0 || e.n > n || !isReset(e.err) {
			t.Errorf("the target read %d bytes then %v; want at most %d then a reset", e.n, e.err, n)
		}
		t.Logf("the target got %d of the %d bytes before the reset", e.n, n)
		select {
		case <-fired:
		default:
			t.Error("the channel did not say the reset fired")
		}
		// Once only.
		c2 := dial(t, p.Addr())
		c2.Write(make([]byte, 2*n))
		c2.CloseWrite()
		if e := <-ends; e.n != 2*n || e.err != io.EOF {
			t.Errorf("a second transfer: %d bytes, %v", e.n, e.err)
		}
	})
	t.Run("from-target", func(t *testing.T) {
		target, ends := sink(t, 1<<20)
		p := start(t, Config{Target: target})
		p.ResetAfter(FromTarget, n)
		c := dial(t, p.Addr())
		if _, err := c.Write([]byte("g")); err != nil {
			t.Fatal(err)
		}
		got, err := io.Copy(io.Discard, c)
		if got == 0 || got > n || !isReset(err) {
			t.Errorf("the client read %d bytes then %v; want at most %d then a reset", got, err, n)
		}
		if e := <-ends; !isReset(e.err) && !errors.Is(e.err, syscall.EPIPE) {
			t.Errorf("the target's write: %v, want a reset", e.err)
		}
	})
	t.Run("clear", func(t *testing.T) {
		target, ends := sink(t, 0)
		p := start(t, Config{Target: target})
		p.ResetAfter(Both, 10)
		p.Blackhole(true)
		p.SetDelay(time.Second)
		p.Clear()
		c := dial(t, p.Addr())
		start := time.Now()
		c.Write(make([]byte, n))
		c.CloseWrite()
		if e := <-ends; e.n != n || e.err != io.EOF {
			t.Errorf("after Clear: %d bytes, %v", e.n, e.err)
		}
		if took := time.Since(start); took >= 900*time.Millisecond {
			t.Errorf("after Clear the transfer took %s", took)
		}
	})
}
