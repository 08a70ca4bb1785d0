package link

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// Throughput and latency of a link next to raw loopback TCP moving the
// same bytes:
//
//	go test -run XXX -bench . -benchtime 3x ./mount/link/
const (
	benchTotal = 64 << 20  // bytes per iteration
	benchChunk = 256 << 10 // bytes per Write and per Read
)

// rawPair is two ends of a loopback TCP connection.
func rawPair(b *testing.B) (net.Conn, net.Conn) {
	ln := listen(b)
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		b.Fatal("accept failed")
	}
	b.Cleanup(func() { c.Close(); s.Close() })
	for _, x := range []net.Conn{c, s} {
		x.SetDeadline(time.Now().Add(testTimeout))
	}
	return c, s
}

func linkPair(b *testing.B, m Method) (net.Conn, net.Conn) {
	keys := newKeys(b, m)
	s := startServer(b, ServerConfig{Name: "bench-server", Method: m, Keys: anyPeer(keys)})
	c, sc := connect(b, s, s.addr(), Config{Name: "bench-client", Method: m, Keys: fixed(keys)})
	return c, sc
}

// benchStream sends benchTotal bytes from w to r per iteration; r acks
// each iteration with one byte, so the time covers delivery.
func benchStream(b *testing.B, w, r net.Conn) { benchStreamN(b, w, r, benchTotal) }

// benchStreamN is benchStream with total bytes per iteration (a multiple
// of benchChunk).
func benchStreamN(b *testing.B, w, r net.Conn, total int) {
	benchDeadline(w, r)
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, benchChunk)
		for range b.N {
			for got := 0; got < total; {
				n, err := r.Read(buf)
				got += n
				if err != nil {
					done <- err
					return
				}
			}
			if _, err := r.Write([]byte{1}); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	data := make([]byte, benchChunk)
	ack := make([]byte, 1)
	b.SetBytes(int64(total))
	b.ResetTimer()
	for range b.N {
		for sent := 0; sent < total; sent += benchChunk {
			if _, err := w.Write(data); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := io.ReadFull(w, ack); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

func BenchmarkThroughput(b *testing.B) {
	b.Run("raw-tcp", func(b *testing.B) {
		c, s := rawPair(b)
		benchStream(b, c, s)
	})
	for _, m := range methods() {
		b.Run("link-"+strings.ToLower(strings.ReplaceAll(string(m), "_", "")), func(b *testing.B) {
			c, s := linkPair(b, m)
			benchStream(b, c, s)
		})
	}
}

// pingsPerOp is the number of round trips in one benchmark iteration,
// so that a few iterations give a stable figure.
const pingsPerOp = 2000

// benchPingPong bounces one byte between the two ends, pingsPerOp times
// per iteration, and reports the time of one round trip.
func benchPingPong(b *testing.B, c, s net.Conn) {
	benchDeadline(c, s)
	go func() {
		buf := make([]byte, 1)
		for range b.N * pingsPerOp {
			if _, err := io.ReadFull(s, buf); err != nil {
				return
			}
			if _, err := s.Write(buf); err != nil {
				return
			}
		}
	}()
	buf := []byte{'x'}
	b.ResetTimer()
	for range b.N {
		for range pingsPerOp {
			if _, err := c.Write(buf); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(c, buf); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*pingsPerOp), "ns/roundtrip")
}

func BenchmarkRoundTrip(b *testing.B) {
	b.Run("raw-tcp", func(b *testing.B) {
		c, s := rawPair(b)
		benchPingPong(b, c, s)
	})
	b.Run("link", func(b *testing.B) {
		c, s := linkPair(b, AES256GCM)
		benchPingPong(b, c, s)
	})
}

// benchDeadline bounds a benchmark run, so a stuck transfer fails it.
func benchDeadline(conns ...net.Conn) {
	for _, c := range conns {
		c.SetDeadline(time.Now().Add(5 * time.Minute))
	}
}
