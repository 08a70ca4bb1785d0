package ninep

import (
	"context"
	"io"
	"net"
	"testing"

	"9fans.net/go/plan9"
	"9fans.net/go/plan9/client"

	"strata/fs"
)

const plan9BenchSize = 64 << 20

// BenchmarkPlan9 moves a 64 MiB file through the 9P2000 server with msize
// 65535 over loopback TCP: with the 9fans client (one request at a time),
// and with a raw client that keeps 16 requests in flight. Writes go to a
// memfs file or to a file that discards them (to see the server rather
// than memfs growing its slice); raw TCP gives the scale.
func BenchmarkPlan9(b *testing.B) {
	src := make([]byte, plan9BenchSize)
	for i := range src {
		src[i] = byte(i * 7)
	}
	mem := plan9TestTree(b, map[string]string{"big": string(src)})
	root := &plan9Extra{Dir: mem, extra: map[string]fs.Node{"null": plan9Null{}}}
	addr := plan9Serve(b, root)
	chunk := src[:1<<20]

	b.Run("tcp-baseline", func(b *testing.B) {
		// Raw loopback TCP in 64 KiB writes, for scale.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { io.Copy(io.Discard, c); c.Close() }()
			}
		}()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		b.SetBytes(plan9BenchSize)
		for b.Loop() {
			for off := 0; off < plan9BenchSize; off += MaxMsize9P {
				if _, err := c.Write(src[off:min(off+MaxMsize9P, plan9BenchSize)]); err != nil {
					b.Fatal(err)
				}
			}
		}
	})

	// write opens a file with open, writes plan9BenchSize bytes and closes it.
	write := func(b *testing.B, open func(*client.Fsys) (*client.Fid, error)) {
		_, fsys := plan9Mount(b, addr, "bench")
		b.SetBytes(plan9BenchSize)
		for b.Loop() {
			fid, err := open(fsys)
			if err != nil {
				b.Fatal(err)
			}
			for range plan9BenchSize / len(chunk) {
				if _, err := fid.Write(chunk); err != nil {
					b.Fatal(err)
				}
			}
			if err := fid.Close(); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("9fans/write-discard", func(b *testing.B) {
		write(b, func(fsys *client.Fsys) (*client.Fid, error) { return fsys.Open("null", plan9.OWRITE) })
	})
	b.Run("9fans/write-memfs", func(b *testing.B) {
		write(b, func(fsys *client.Fsys) (*client.Fid, error) {
			fid, err := fsys.Create("out", plan9.OWRITE, 0o644)
			if err != nil {
				fid, err = fsys.Open("out", plan9.OWRITE|plan9.OTRUNC)
			}
			return fid, err
		})
	})

	b.Run("9fans/read-memfs", func(b *testing.B) {
		_, fsys := plan9Mount(b, addr, "bench")
		buf := make([]byte, 1<<20)
		b.SetBytes(plan9BenchSize)
		for b.Loop() {
			fid, err := fsys.Open("big", plan9.OREAD)
			if err != nil {
				b.Fatal(err)
			}
			total := 0
			for {
				n, err := fid.Read(buf)
				total += n
				if err == io.EOF {
					break
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			fid.Close()
			if total != plan9BenchSize {
				b.Fatalf("read %d bytes", total)
			}
		}
	})

	const window = 16
	b.Run("pipelined/write-discard", func(b *testing.B) {
		rc := plan9DialVersion(b, addr, MaxMsize9P)
		rc.ok(&plan9.Fcall{Type: plan9.Tattach, Tag: 1, Fid: 0, Afid: plan9.NOFID, Uname: "bench"})
		rc.ok(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 0, Newfid: 1, Wname: []string{"null"}})
		rc.ok(&plan9.Fcall{Type: plan9.Topen, Tag: 1, Fid: 1, Mode: plan9.OWRITE})
		iounit := int(rc.msize) - 24
		b.SetBytes(plan9BenchSize)
		for b.Loop() {
			off, inFlight := 0, 0
			for off < plan9BenchSize || inFlight > 0 {
				for inFlight < window && off < plan9BenchSize {
					n := min(iounit, plan9BenchSize-off)
					rc.send(&plan9.Fcall{Type: plan9.Twrite, Tag: uint16(off / iounit), Fid: 1, Offset: uint64(off), Data: src[off : off+n]})
					off += n
					inFlight++
				}
				if rx := rc.recv(); rx.Type != plan9.Rwrite {
					b.Fatal(rx)
				}
				inFlight--
			}
		}
	})

	b.Run("pipelined/read-memfs", func(b *testing.B) {
		rc := plan9DialVersion(b, addr, MaxMsize9P)
		rc.ok(&plan9.Fcall{Type: plan9.Tattach, Tag: 1, Fid: 0, Afid: plan9.NOFID, Uname: "bench"})
		rc.ok(&plan9.Fcall{Type: plan9.Twalk, Tag: 1, Fid: 0, Newfid: 1, Wname: []string{"big"}})
		rc.ok(&plan9.Fcall{Type: plan9.Topen, Tag: 1, Fid: 1, Mode: plan9.OREAD})
		iounit := int(rc.msize) - 24
		b.SetBytes(plan9BenchSize)
		for b.Loop() {
			off, inFlight, total := 0, 0, 0
			for off < plan9BenchSize || inFlight > 0 {
				for inFlight < window && off < plan9BenchSize {
					rc.send(&plan9.Fcall{Type: plan9.Tread, Tag: uint16(off / iounit), Fid: 1, Offset: uint64(off), Count: uint32(iounit)})
					off += iounit
					inFlight++
				}
				rx := rc.recv()
				if rx.Type != plan9.Rread {
					b.Fatal(rx)
				}
				total += len(rx.Data)
				inFlight--
			}
			if total != plan9BenchSize {
				b.Fatalf("read %d bytes", total)
			}
		}
	})
}

// plan9Null is a file that discards what is written to it.
type plan9Null struct{ fs.FileDefaults }

func (plan9Null) Stat(context.Context) (fs.Info, error) {
	return fs.Info{Name: "null", Mode: 0o666, ID: 7777, Stream: true}, nil
}

func (plan9Null) Open(context.Context, fs.Flag) (fs.Handle, error) { return plan9NullHandle{}, nil }

type plan9NullHandle struct{ fs.HandleDefaults }

func (plan9NullHandle) WriteAt(_ context.Context, p []byte, _ int64) (int, error) { return len(p), nil }
