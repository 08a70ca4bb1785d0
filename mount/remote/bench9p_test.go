package remote

import (
	"io"
	"testing"

	"9fans.net/go/plan9"
	plan9client "9fans.net/go/plan9/client"

	"strata/fs"
)

// The same 64 MiB store file through the 9P2000 dialect of the same port,
// with the 9fans client (msize 65535, one request at a time). Run with the
// 9P2000.L benchmarks so the ratios to raw TCP come from one run.

func plan9Fsys(b *testing.B, addr string) *plan9client.Fsys {
	b.Helper()
	conn, err := plan9client.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	fsys, err := conn.Attach(nil, "bench", "")
	if err != nil {
		b.Fatal(err)
	}
	return fsys
}

func bench9P2000Read(b *testing.B, addr string) {
	fid, err := plan9Fsys(b, addr).Open("big", plan9.OREAD)
	if err != nil {
		b.Fatal(err)
	}
	defer fid.Close()
	buf := make([]byte, 64<<10)
	b.SetBytes(benchSize)
	b.ResetTimer()
	for range b.N {
		for off := int64(0); off < benchSize; {
			n, err := fid.ReadAt(buf, off)
			if err != nil && err != io.EOF {
				b.Fatal(err)
			}
			if n == 0 {
				b.Fatalf("short file: %d bytes", off)
			}
			off += int64(n)
		}
	}
}

func bench9P2000Write(b *testing.B, addr string) {
	fsys := plan9Fsys(b, addr)
	data := make([]byte, benchChunk)
	b.SetBytes(benchSize)
	b.ResetTimer()
	for range b.N {
		fid, err := fsys.Open("w9", plan9.OWRITE|plan9.OTRUNC)
		if err != nil {
			fid, err = fsys.Create("w9", plan9.OWRITE|plan9.OTRUNC, 0o644)
		}
		if err != nil {
			b.Fatal(err)
		}
		for off := 0; off < benchSize; off += len(data) {
			if _, err := fid.WriteAt(data[:min(len(data), benchSize-off)], int64(off)); err != nil {
				b.Fatal(err)
			}
		}
		if err := fid.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// benchTreeRead reads name through a tree's Handles: the store's own
// (the floor under every 9P number) or a remote view's.
func benchTreeRead(b *testing.B, root fs.Dir, name string) {
	n, err := root.Lookup(ctx, name)
	if err != nil {
		b.Fatal(err)
	}
	h, err := n.(fs.File).Open(ctx, fs.ReadOnly)
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close(ctx)
	buf := make([]byte, benchChunk)
	b.SetBytes(benchSize)
	b.ResetTimer()
	for range b.N {
		for off := int64(0); off < benchSize; {
			n, err := h.ReadAt(ctx, buf, off)
			if err != nil && err != io.EOF {
				b.Fatal(err)
			}
			off += int64(n)
		}
	}
}

// benchTreeWrite writes and closes (acknowledges, so fsyncs) name through
// a tree's Handles; through the store's own it is the disk's limit.
func benchTreeWrite(b *testing.B, root fs.Dir, name string) {
	data := make([]byte, benchChunk)
	b.SetBytes(benchSize)
	b.ResetTimer()
	for range b.N {
		_, h, err := root.Create(ctx, name, fs.WriteOnly|fs.Truncate, 0o644)
		if err != nil {
			b.Fatal(err)
		}
		for off := 0; off < benchSize; off += len(data) {
			if _, err := h.WriteAt(ctx, data[:min(len(data), benchSize-off)], int64(off)); err != nil {
				b.Fatal(err)
			}
		}
		if err := h.Close(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
