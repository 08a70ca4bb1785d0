package remote

import (
	"io"
	"net"
	"testing"

	"github.com/hugelgupf/p9/p9"

	"strata/fs/ninep"
)

// Sequential transfer of a 64 MiB store file through 9P2000.L with a
// 4 MiB msize, next to raw loopback TCP moving the same bytes in 4 MiB
// writes. Compare the MB/s of the sub-benchmarks:
//
//	go test -run NONE -bench 64MiB ./mount/remote
//
// "p9" is github.com/hugelgupf/p9's client on its own; "tree" is this
// package (deadline per round trip, fs.Handle on top).
const (
	benchSize  = 64 << 20
	benchChunk = ninep.MaxMsizeL - 4096 // one Tread or Twrite at a 4 MiB msize
)

func BenchmarkRead64MiB(b *testing.B) {
	root := openStore(b)
	data := make([]byte, benchSize)
	for i := range data {
		data[i] = byte(i >> 12)
	}
	put(b, root, "big", data)
	addr := serve(b, root)

	b.Run("raw-tcp", func(b *testing.B) { rawTCP(b, false) })
	b.Run("p9", func(b *testing.B) {
		f := p9File(b, addr, "big")
		buf := make([]byte, benchChunk)
		b.SetBytes(benchSize)
		b.ResetTimer()
		for range b.N {
			for off := int64(0); off < benchSize; {
				n, err := f.ReadAt(buf, off)
				if err != nil && err != io.EOF {
					b.Fatal(err)
				}
				off += int64(n)
			}
		}
	})
	b.Run("local", func(b *testing.B) { benchTreeRead(b, root, "big") })
	b.Run("9p2000", func(b *testing.B) { bench9P2000Read(b, addr) })
	b.Run("tree", func(b *testing.B) { benchTreeRead(b, dial(b, addr, Options{}).Root(), "big") })
}

// BenchmarkWrite64MiB writes the file and closes it; the close
// acknowledges the data, so the time includes the store's fsync.
func BenchmarkWrite64MiB(b *testing.B) {
	root := openStore(b)
	addr := serve(b, root)
	data := make([]byte, benchChunk)

	b.Run("raw-tcp", func(b *testing.B) { rawTCP(b, true) })
	b.Run("p9", func(b *testing.B) {
		_, dir := p9Client(b, addr)
		b.SetBytes(benchSize)
		b.ResetTimer()
		for range b.N {
			_, f, err := dir.Walk(nil)
			if err != nil {
				b.Fatal(err)
			}
			if _, _, _, err := f.Create("w", p9.WriteOnly|lOTRUNC, 0o644, p9.NoUID, p9.NoGID); err != nil {
				b.Fatal(err)
			}
			for off := 0; off < benchSize; off += len(data) {
				if _, err := f.WriteAt(data[:min(len(data), benchSize-off)], int64(off)); err != nil {
					b.Fatal(err)
				}
			}
			if err := f.Close(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("local", func(b *testing.B) { benchTreeWrite(b, root, "wl") })
	b.Run("9p2000", func(b *testing.B) { bench9P2000Write(b, addr) })
	b.Run("tree", func(b *testing.B) { benchTreeWrite(b, dial(b, addr, Options{}).Root(), "w") })
}

// rawTCP moves benchSize bytes over a loopback connection per iteration,
// in benchChunk writes; toServer sends them from the benchmark's side.
func rawTCP(b *testing.B, toServer bool) { rawTCPSized(b, benchSize, benchChunk, toServer) }

// rawTCPSized is rawTCP with size bytes per iteration in chunk writes.
func rawTCPSized(b *testing.B, size, chunk int, toServer bool) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, chunk)
		ack := []byte{1}
		for {
			if toServer {
				// Receive one transfer, then acknowledge it.
				for got := 0; got < size; {
					n, err := c.Read(buf[:min(len(buf), size-got)])
					if err != nil {
						return
					}
					got += n
				}
				if _, err := c.Write(ack); err != nil {
					return
				}
				continue
			}
			// Wait for a request, then send one transfer.
			if _, err := io.ReadFull(c, ack); err != nil {
				return
			}
			for sent := 0; sent < size; sent += len(buf) {
				if _, err := c.Write(buf[:min(len(buf), size-sent)]); err != nil {
					return
				}
			}
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, chunk)
	one := []byte{1}
	b.SetBytes(int64(size))
	b.ResetTimer()
	for range b.N {
		if toServer {
			for sent := 0; sent < size; sent += len(buf) {
				if _, err := c.Write(buf[:min(len(buf), size-sent)]); err != nil {
					b.Fatal(err)
				}
			}
			if _, err := io.ReadFull(c, one); err != nil {
				b.Fatal(err)
			}
			continue
		}
		if _, err := c.Write(one); err != nil {
			b.Fatal(err)
		}
		for got := 0; got < size; {
			n, err := c.Read(buf[:min(len(buf), size-got)])
			if err != nil {
				b.Fatal(err)
			}
			got += n
		}
	}
}

// p9Client connects github.com/hugelgupf/p9's client with a 4 MiB msize.
func p9Client(b *testing.B, addr string) (*p9.Client, p9.File) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	cl, err := p9.NewClient(c, p9.WithMessageSize(ninep.MaxMsizeL))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cl.Close() })
	root, err := cl.Attach("")
	if err != nil {
		b.Fatal(err)
	}
	return cl, root
}

func p9File(b *testing.B, addr, name string) p9.File {
	_, root := p9Client(b, addr)
	_, f, err := root.Walk([]string{name})
	if err != nil {
		b.Fatal(err)
	}
	if _, _, err := f.Open(p9.ReadOnly); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	return f
}
