package remote

import (
	"io"
	"net"
	"testing"

	"github.com/hugelgupf/p9/fsimpl/templatefs"
	"github.com/hugelgupf/p9/p9"

	"strata/fs"
	"strata/fs/memfs"
)

// BenchmarkRoundTrip measures the latency of small requests: what one
// round trip to a 9P2000.L server on loopback costs, next to a 1-byte
// TCP ping-pong. Run it alone so that nothing else competes for the CPUs:
//
//	go test -run NONE -bench RoundTrip -benchtime 20000x ./mount/remote
//
// "p9-bare" and "p9-getattr" are one Tgetattr each through p9's client,
// against p9's own server straight on the connection (the floor of the
// library) and against the ninep server (with our adapter). The others go
// through a Tree: "lookup" is a walk and a clunk, "open-read-close" a
// walk, an open, a read and a clunk, "write-read" a write and a read on
// an open handle. Each reports its round trips per op (rt/op) and the
// cost of one (ns/rt).
func BenchmarkRoundTrip(b *testing.B) {
	root := memfs.New()
	put(b, root, "f", []byte("0123456789"))
	addr := serve(b, root)

	perRT := func(b *testing.B, rts int) {
		b.ReportMetric(float64(rts), "rt/op")
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*rts), "ns/rt")
	}

	b.Run("raw-tcp", func(b *testing.B) {
		c := pingPong(b)
		one := make([]byte, 1)
		b.ResetTimer()
		for range b.N {
			if _, err := c.Write(one); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(c, one); err != nil {
				b.Fatal(err)
			}
		}
		perRT(b, 1)
	})
	b.Run("p9-bare", func(b *testing.B) {
		_, f := p9Client(b, bareP9(b))
		b.ResetTimer()
		for range b.N {
			if _, _, _, err := f.GetAttr(p9.AttrMask{Mode: true}); err != nil {
				b.Fatal(err)
			}
		}
		perRT(b, 1)
	})
	b.Run("p9-getattr", func(b *testing.B) {
		_, f := p9Client(b, addr)
		b.ResetTimer()
		for range b.N {
			if _, _, _, err := f.GetAttr(p9.AttrMask{Mode: true}); err != nil {
				b.Fatal(err)
			}
		}
		perRT(b, 1)
	})

	b.Run("p9-walk-clunk", func(b *testing.B) {
		_, f := p9Client(b, addr)
		b.ResetTimer()
		for range b.N {
			_, g, _, _, err := f.WalkGetAttr([]string{"f"})
			if err != nil {
				b.Fatal(err)
			}
			if err := g.Close(); err != nil {
				b.Fatal(err)
			}
		}
		perRT(b, 2)
	})

	tr := dial(b, addr, Options{})
	b.Run("lookup", func(b *testing.B) {
		d := tr.Root()
		b.ResetTimer()
		for range b.N {
			if _, err := d.Lookup(ctx, "f"); err != nil {
				b.Fatal(err)
			}
		}
		perRT(b, 2)
	})
	b.Run("open-read-close", func(b *testing.B) {
		f := tr.File("f")
		buf := make([]byte, 64)
		b.ResetTimer()
		for range b.N {
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
		}
		// walk, open, read, and the read of the end; clunk.
		perRT(b, 5)
	})
	b.Run("write-read", func(b *testing.B) {
		_, h, err := tr.Root().Create(ctx, "w", fs.ReadWrite, 0o644)
		if err != nil {
			b.Fatal(err)
		}
		defer h.Close(ctx)
		msg := []byte("ping")
		buf := make([]byte, len(msg))
		b.ResetTimer()
		for range b.N {
			if _, err := h.WriteAt(ctx, msg, 0); err != nil {
				b.Fatal(err)
			}
			if n, err := h.ReadAt(ctx, buf, 0); n != len(buf) || err != nil {
				b.Fatalf("read %d bytes, %v", n, err)
			}
		}
		perRT(b, 2)
	})
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
		io.Copy(c, c)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

// bareP9 serves one empty directory with p9's own server, straight on
// each connection, and returns its address.
func bareP9(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	srv := p9.NewServer(bareAttacher{})
	go srv.Serve(ln)
	return ln.Addr().String()
}

type bareAttacher struct{}

func (bareAttacher) Attach() (p9.File, error) { return &bareDir{}, nil }

type bareDir struct{ templatefs.NoopFile }

func (d *bareDir) Walk(names []string) ([]p9.QID, p9.File, error) {
	return nil, &bareDir{}, nil
}

func (d *bareDir) WalkGetAttr(names []string) ([]p9.QID, p9.File, p9.AttrMask, p9.Attr, error) {
	return nil, &bareDir{}, p9.AttrMask{}, p9.Attr{}, nil
}

func (d *bareDir) GetAttr(p9.AttrMask) (p9.QID, p9.AttrMask, p9.Attr, error) {
	return p9.QID{Type: p9.TypeDir}, p9.AttrMask{Mode: true}, p9.Attr{Mode: p9.ModeDirectory | 0o755}, nil
}
