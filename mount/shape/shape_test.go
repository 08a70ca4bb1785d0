package shape

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"strings"
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
