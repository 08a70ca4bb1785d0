package remote

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/hugelgupf/p9/fsimpl/templatefs"
	"github.com/hugelgupf/p9/p9"

	"strata/fs"
	"strata/fs/memfs"
)

// BenchmarkRoundTrip measures the latency of small requests: what one
// round trip to a 9P2000.L server on loopback costs, next to a 1-byte
// TCP ping-pong. Run it alone so that nothing else competes for the CPUs,
// and compare medians of several runs (loopback latency is noisy):
//
//	go test -run NONE -bench RoundTrip -benchtime 10000x -count 5 ./mount/remote
//
// "p9-client" is one Tgetattr through p9's client against a responder
// that answers from one goroutine, as the raw ping-pong does: the cost of
// p9's client. "p9-bare" is the same against p9's own server straight on
// the connection: the floor of the library. "p9-getattr" and
// "p9-walk-clunk" are p9's client against the ninep server. The others go
// through a Tree: "lookup" is a walk and a clunk, "open-read-close" a
// walk, an open, two reads (the second finds the end) and a clunk,
// "write-read" a write and a read on an open handle, and
// "write-read-deadline" the same under a context deadline sooner than the
// step's bound, as a tier forwarding a call makes them.
func BenchmarkRoundTrip(b *testing.B) {
	root := memfs.New()
	put(b, root, "f", []byte("0123456789"))
	addr := serve(b, root)

	b.Run("raw-tcp", func(b *testing.B) {
		c := pingPong(b)
		one := make([]byte, 1)
		timeRTs(b, 1, func() {
			if _, err := c.Write(one); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(c, one); err != nil {
				b.Fatal(err)
			}
		})
	})
	b.Run("p9-client", func(b *testing.B) {
		_, f := p9Client(b, cannedP9(b))
		timeRTs(b, 1, func() {
			if _, _, _, err := f.GetAttr(p9.AttrMask{Mode: true}); err != nil {
				b.Fatal(err)
			}
		})
	})
	b.Run("p9-bare", func(b *testing.B) {
		_, f := p9Client(b, bareP9(b))
		timeRTs(b, 1, func() {
			if _, _, _, err := f.GetAttr(p9.AttrMask{Mode: true}); err != nil {
				b.Fatal(err)
			}
		})
	})
	b.Run("p9-getattr", func(b *testing.B) {
		_, f := p9Client(b, addr)
		timeRTs(b, 1, func() {
			if _, _, _, err := f.GetAttr(p9.AttrMask{Mode: true}); err != nil {
				b.Fatal(err)
			}
		})
	})
	b.Run("p9-walk-clunk", func(b *testing.B) {
		_, f := p9Client(b, addr)
		timeRTs(b, 2, func() {
			_, g, _, _, err := f.WalkGetAttr([]string{"f"})
			if err != nil {
				b.Fatal(err)
			}
			if err := g.Close(); err != nil {
				b.Fatal(err)
			}
		})
	})

	tr := dial(b, addr, Options{})
	b.Run("lookup", func(b *testing.B) {
		d := tr.Root()
		timeRTs(b, 2, func() {
			if _, err := d.Lookup(ctx, "f"); err != nil {
				b.Fatal(err)
			}
		})
	})
	b.Run("open-read-close", func(b *testing.B) {
		f := tr.File("f")
		buf := make([]byte, 64)
		timeRTs(b, 5, func() {
			h, err := f.Open(ctx, fs.ReadOnly)
			if err != nil {
				b.Fatal(err)
			}
			if n, err := h.ReadAt(ctx, buf, 0); n != 10 || err != io.EOF {
				b.Fatalf("read %d bytes, %v", n, err)
			}
			if err := h.Close(ctx); err != nil {
				b.Fatal(err)
			}
		})
	})
	writeRead := func(b *testing.B, ctx context.Context) {
		_, h, err := tr.Root().Create(ctx, "w", fs.ReadWrite, 0o644)
		if err != nil {
			b.Fatal(err)
		}
		defer h.Close(ctx)
		msg := []byte("ping")
		buf := make([]byte, len(msg))
		timeRTs(b, 2, func() {
			if _, err := h.WriteAt(ctx, msg, 0); err != nil {
				b.Fatal(err)
			}
			if n, err := h.ReadAt(ctx, buf, 0); n != len(buf) || err != nil {
				b.Fatalf("read %d bytes, %v", n, err)
			}
		})
	}
	b.Run("write-read", func(b *testing.B) { writeRead(b, ctx) })
	b.Run("write-read-deadline", func(b *testing.B) {
		dctx, cancel := context.WithTimeout(ctx, time.Hour)
		defer cancel()
		writeRead(b, WithTimeout(dctx, 2*time.Hour))
	})
}

// timeRTs runs op, which makes rts round trips, b.N times. Besides the mean
// (ns/op) it reports the median (p50-ns), which the odd slow op (a GC, a
// preempted thread) does not move, and the mean cost of a round trip
// (ns/rt).
func timeRTs(b *testing.B, rts int, op func()) {
	took := make([]time.Duration, b.N)
	b.ResetTimer()
	for i := range b.N {
		start := time.Now()
		op()
		took[i] = time.Since(start)
	}
	b.StopTimer()
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(rts), "rt/op")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*rts), "ns/rt")
}

// pingPong connects to a loopback server that echoes every byte.
func pingPong(b *testing.B) net.Conn {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		// Plain reads and writes, as a server's loop makes them (io.Copy
		// would splice).
		one := make([]byte, 1)
		for {
			if _, err := c.Read(one); err != nil {
				return
			}
			if _, err := c.Write(one); err != nil {
				return
			}
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

// bareP9 serves an empty directory with p9's own server, straight on each
// connection, and returns its address.
func bareP9(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go p9.NewServer(bareAttacher{}).Serve(ln)
	return ln.Addr().String()
}

type bareAttacher struct{}

func (bareAttacher) Attach() (p9.File, error) { return &bareDir{}, nil }

type bareDir struct{ templatefs.NoopFile }

func (*bareDir) Walk([]string) ([]p9.QID, p9.File, error) { return nil, &bareDir{}, nil }

func (*bareDir) GetAttr(p9.AttrMask) (p9.QID, p9.AttrMask, p9.Attr, error) {
	return p9.QID{Type: p9.TypeDir}, p9.AttrMask{Mode: true}, p9.Attr{Mode: p9.ModeDirectory | 0o755}, nil
}

// cannedP9 answers a p9 client from one goroutine per connection, with
// canned replies: Rversion, Rattach, an all-zero Rgetattr, Rclunk. It
// returns its address.
func cannedP9(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go cannedConn(c)
		}
	}()
	return ln.Addr().String()
}

func cannedConn(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	var hdr [7]byte
	out := make([]byte, 0, 256)
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return
		}
		size := binary.LittleEndian.Uint32(hdr[:])
		body := make([]byte, size-7)
		if _, err := io.ReadFull(r, body); err != nil {
			return
		}
		var reply []byte
		switch hdr[4] {
		case 100: // Tversion: msize[4] version[s]
			const v = "9P2000.L"
			reply = binary.LittleEndian.AppendUint32(nil, binary.LittleEndian.Uint32(body))
			reply = binary.LittleEndian.AppendUint16(reply, uint16(len(v)))
			reply = append(reply, v...)
		case 104: // Tattach: qid[13]
			reply = make([]byte, 13)
		case 24: // Tgetattr: valid[8] qid[13] and 15 fields of 8 bytes
			reply = make([]byte, 8+13+3*4+15*8)
		case 120: // Tclunk
		default:
			return
		}
		out = binary.LittleEndian.AppendUint32(out[:0], uint32(7+len(reply)))
		out = append(out, hdr[4]+1, hdr[5], hdr[6])
		out = append(out, reply...)
		if _, err := c.Write(out); err != nil {
			return
		}
	}
}

// BenchmarkStep is the cost of a step itself, around an fn that answers
// at once: what this package adds to each round trip.
func BenchmarkStep(b *testing.B) {
	s := fakeLink(b)
	dctx, cancel := context.WithTimeout(ctx, time.Hour)
	defer cancel()
	dctx = WithTimeout(dctx, 2*time.Hour)
	f := newFid(nil)
	for _, c := range []struct {
		name string
		ctx  context.Context
	}{{"attached", ctx}, {"detached", dctx}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				if _, err := exec(c.ctx, s, s.plan(c.ctx), "walk", "a/b", func() (int, error) { return 1, nil }, nil, f); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
