package link

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"strata/mount/shape"
)

// BenchmarkShapedThroughput moves data over each link method and over
// plain TCP through the same delay line: the links of the topology (20 ms
// RTT client to edge, 80 ms app edge to cloud, and 80 ms with the rate
// limited to 4 MB/s). It shows what encryption costs once the network,
// not the CPU, is the limit.
//
//	go test -run '^$' -bench ShapedThroughput -benchtime 2x ./mount/link/
func BenchmarkShapedThroughput(b *testing.B) {
	for _, sh := range []struct {
		name  string
		delay time.Duration
		rate  int64
	}{
		{"rtt20ms", 10 * time.Millisecond, 0},
		{"rtt80ms", 40 * time.Millisecond, 0},
		{"rtt80ms-4MBps", 40 * time.Millisecond, 4 << 20},
	} {
		const total = 16 << 20
		b.Run(sh.name+"/plain", func(b *testing.B) {
			ln := listen(b)
			p := shapeTo(b, ln.Addr().String(), sh.delay, sh.rate)
			accepted := make(chan net.Conn, 1)
			go func() {
				c, _ := ln.Accept()
				accepted <- c
			}()
			c, err := net.Dial("tcp", p.Addr())
			if err != nil {
				b.Fatal(err)
			}
			s := <-accepted
			if s == nil {
				b.Fatal("accept failed")
			}
			b.Cleanup(func() { c.Close(); s.Close() })
			benchStreamN(b, c, s, total)
		})
		for _, m := range methods() {
			b.Run(fmt.Sprintf("%s/%s", sh.name, strings.ToLower(strings.ReplaceAll(string(m), "_", ""))), func(b *testing.B) {
				keys := newKeys(b, m)
				srv := startServer(b, ServerConfig{Name: "bench-server", Method: m, Keys: anyPeer(keys)})
				p := shapeTo(b, srv.addr(), sh.delay, sh.rate)
				c, s := connect(b, srv, p.Addr(), Config{Name: "bench-client", Method: m, Keys: fixed(keys)})
				benchStreamN(b, c, s, total)
			})
		}
	}
}

func shapeTo(b *testing.B, target string, delay time.Duration, rate int64) *shape.Proxy {
	p, err := shape.Start(context.Background(), shape.Config{Listen: "127.0.0.1:0", Target: target, Delay: delay, Rate: rate})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close() })
	return p
}
