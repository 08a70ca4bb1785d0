package up

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"

	"strata/tiers/tier"
)

// The client's FUSE mount against go-fuse's loopback file system on a
// plain directory of the same disk. The loopback without passthrough is
// what FUSE itself costs, so the ratio to it is what the client tier, the
// encrypted link, 9P and the edge's store add; go-fuse's default loopback
// may hand file data to the kernel (passthrough), which is close to the
// disk itself.
//
//	go test -run '^$' -bench BenchmarkMount -benchtime 3x ./tiers/up/
//	STRATA_BENCH_MIB=64 go test -run '^$' -bench BenchmarkMountSeq -benchtime 3x ./tiers/up/

// benchMiB is the size of the sequential file: STRATA_BENCH_MIB, or 256.
func benchMiB(b *testing.B) int { return benchSize(b, "STRATA_BENCH_MIB", 256, "MiB") }

// benchSize is the positive number in the environment variable env, or def
// if it is unset; what names its unit in the refusal of anything else.
func benchSize(b *testing.B, env string, def int, what string) int {
	s := os.Getenv(env)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		b.Fatalf("%s=%q: want a positive number of %s", env, s, what)
	}
	return n
}

// loopbackMount mounts dir with go-fuse's loopback file system, with the
// same one-second name and attribute caching as the client's mount. With
// passthrough false its files' data goes through the FUSE server, as the
// client's does; with it true go-fuse gives the kernel the backing file
// where the kernel allows it (FUSE passthrough: root, Linux 6.9 on), and
// reads and writes then reach the disk's file without the server.
func loopbackMount(b *testing.B, dir string, passthrough bool) string {
	b.Helper()
	root, err := gofs.NewLoopbackRoot(dir)
	if err != nil {
		b.Fatal(err)
	}
	name := "loopback"
	if !passthrough {
		name = "loopback-nopass"
		root = &serverLoopbackNode{root.(*gofs.LoopbackNode)}
	}
	mnt := filepath.Join(b.TempDir(), name)
	if err := os.Mkdir(mnt, 0o755); err != nil {
		b.Fatal(err)
	}
	sec := time.Second
	srv, err := gofs.Mount(mnt, root, &gofs.Options{
		EntryTimeout: &sec,
		AttrTimeout:  &sec,
		MountOptions: gofuse.MountOptions{FsName: name, Name: name, DisableXAttrs: true},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			exec.Command("fusermount3", "-u", "-z", mnt).Run()
		}
	})
	return mnt
}

// serverLoopbackNode is go-fuse's loopback node whose files offer the
// kernel no backing file, so that their data goes through the server.
type serverLoopbackNode struct{ *gofs.LoopbackNode }

func (n *serverLoopbackNode) WrapChild(_ context.Context, ops gofs.InodeEmbedder) gofs.InodeEmbedder {
	if ln, ok := ops.(*gofs.LoopbackNode); ok {
		return &serverLoopbackNode{ln}
	}
	return ops
}

func (n *serverLoopbackNode) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	fh, fl, errno := n.LoopbackNode.Open(ctx, flags)
	if errno != 0 {
		return nil, 0, errno
	}
	return serverFile{fh}, fl, 0
}

func (n *serverLoopbackNode) Create(ctx context.Context, name string, flags, mode uint32, out *gofuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	ch, fh, fl, errno := n.LoopbackNode.Create(ctx, name, flags, mode, out)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	return ch, serverFile{fh}, fl, 0
}

// serverFile is a loopback file without its backing file descriptor.
type serverFile struct{ fh gofs.FileHandle }

func (f serverFile) Read(ctx context.Context, dest []byte, off int64) (gofuse.ReadResult, syscall.Errno) {
	return f.fh.(gofs.FileReader).Read(ctx, dest, off)
}

func (f serverFile) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	return f.fh.(gofs.FileWriter).Write(ctx, data, off)
}

func (f serverFile) Flush(ctx context.Context) syscall.Errno {
	return f.fh.(gofs.FileFlusher).Flush(ctx)
}

func (f serverFile) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	return f.fh.(gofs.FileFsyncer).Fsync(ctx, flags)
}

func (f serverFile) Release(ctx context.Context) syscall.Errno {
	return f.fh.(gofs.FileReleaser).Release(ctx)
}

func (f serverFile) Getattr(ctx context.Context, out *gofuse.AttrOut) syscall.Errno {
	return f.fh.(gofs.FileGetattrer).Getattr(ctx, out)
}

func (f serverFile) Setattr(ctx context.Context, in *gofuse.SetAttrIn, out *gofuse.AttrOut) syscall.Errno {
	return f.fh.(gofs.FileSetattrer).Setattr(ctx, in, out)
}

func (f serverFile) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	return f.fh.(gofs.FileLseeker).Lseek(ctx, off, whence)
}

// mountPair is the client's /store through its mount, with the directory
// that holds its files on disk, and a plain directory through two loopback
// mounts, with and without passthrough.
type mountPair struct {
	strata, strataDir     string
	loopback, loopbackDir string
	loopbackNoPass        string
}

func startMountPair(b *testing.B) mountPair {
	b.Helper()
	requireFUSE(b)
	dir := b.TempDir()
	h := start(b, Config{Dir: filepath.Join(dir, "hierarchy")})
	mnt, _ := mountClient(b, h, "", 0)
	// The edge keeps each client's store in store/CLIENT of its data
	// directory (tiers/edge), made at the client's first attach.
	p := mountPair{
		strata:      filepath.Join(mnt, "store"),
		strataDir:   filepath.Join(dir, "hierarchy", h.Groups[0].Name, "edge", "store", h.Groups[0].Clients[0]),
		loopbackDir: filepath.Join(dir, "plain"),
	}
	if _, err := os.Stat(p.strata); err != nil {
		b.Fatal(err)
	}
	for _, d := range []string{p.strataDir, p.loopbackDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			b.Fatal(err)
		}
	}
	p.loopback = loopbackMount(b, p.loopbackDir, true)
	p.loopbackNoPass = loopbackMount(b, p.loopbackDir, false)
	return p
}

// each runs fn as a sub-benchmark on each mount, named strata-NAME,
// loopback-NAME and loopback-nopass-NAME.
func (p mountPair) each(b *testing.B, name string, fn func(b *testing.B, mnt string)) {
	b.Run("strata-"+name, func(b *testing.B) { fn(b, p.strata) })
	b.Run("loopback-"+name, func(b *testing.B) { fn(b, p.loopback) })
	b.Run("loopback-nopass-"+name, func(b *testing.B) { fn(b, p.loopbackNoPass) })
}

// fillPattern fills buf with bytes that are not all alike.
func fillPattern(buf []byte, seed int) {
	for i := range buf {
		buf[i] = byte(i*7 + seed)
	}
}

// writeSeq writes size bytes to path in writes of len(buf), then syncs
// and closes it.
func writeSeq(path string, size int64, buf []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	for off := int64(0); off < size; off += int64(len(buf)) {
		if _, err := f.Write(buf[:min(int64(len(buf)), size-off)]); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// readSeq reads path to its end in reads of len(buf) and returns how many
// bytes it read; it stops after limit bytes.
func readSeq(path string, buf []byte, limit int64) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var n int64
	for n <= limit {
		m, err := f.Read(buf)
		n += int64(m)
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
	return n, fmt.Errorf("%s: more than %d bytes", path, limit)
}

// Sequential read and write of one large file (256 MiB, or
// STRATA_BENCH_MIB) in 1 MiB buffers; a write includes fsync and close.
// The file read is written beforehand straight into each mount's
// directory on disk.
func BenchmarkMountSeq(b *testing.B) {
	p := startMountPair(b)
	size := int64(benchMiB(b)) << 20
	buf := make([]byte, 1<<20)
	fillPattern(buf, 1)
	for _, d := range []string{p.strataDir, p.loopbackDir} {
		if err := writeSeq(filepath.Join(d, "seq-read"), size, buf); err != nil {
			b.Fatal(err)
		}
	}
	p.each(b, "read", func(b *testing.B, mnt string) {
		b.SetBytes(size)
		for range b.N {
			n, err := readSeq(filepath.Join(mnt, "seq-read"), buf, size)
			if err != nil || n != size {
				b.Fatalf("read %d of %d bytes: %v", n, size, err)
			}
		}
	})
	p.each(b, "write", func(b *testing.B, mnt string) {
		b.SetBytes(size)
		for range b.N {
			if err := writeSeq(filepath.Join(mnt, "seq-write"), size, buf); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		if fi, err := os.Stat(filepath.Join(mnt, "seq-write")); err != nil || fi.Size() != size {
			b.Fatalf("after the writes: %v %v", fi, err)
		}
	})
}

// metaFiles is the size of the directory that ls lists.
const metaFiles = 10_000

// `ls -l` of a directory of 10,000 files (read the directory, lstat each
// name) and cat of a small file. The files are made beforehand straight
// in each mount's directory on disk.
func BenchmarkMountMeta(b *testing.B) {
	p := startMountPair(b)
	small := []byte("a small file, read whole with each cat\n")
	for _, d := range []string{p.strataDir, p.loopbackDir} {
		many := filepath.Join(d, "many")
		if err := os.Mkdir(many, 0o755); err != nil {
			b.Fatal(err)
		}
		for i := range metaFiles {
			if err := os.WriteFile(filepath.Join(many, fmt.Sprintf("file-%05d", i)), []byte(strconv.Itoa(i)), 0o644); err != nil {
				b.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(d, "small"), small, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	p.each(b, "ls", func(b *testing.B, mnt string) {
		dir := filepath.Join(mnt, "many")
		for range b.N {
			ents, err := os.ReadDir(dir)
			if err != nil || len(ents) != metaFiles {
				b.Fatalf("listed %d of %d: %v", len(ents), metaFiles, err)
			}
			for _, e := range ents {
				if _, err := os.Lstat(filepath.Join(dir, e.Name())); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	p.each(b, "cat", func(b *testing.B, mnt string) {
		for range b.N {
			got, err := os.ReadFile(filepath.Join(mnt, "small"))
			if err != nil || !bytes.Equal(got, small) {
				b.Fatalf("%q %v", got, err)
			}
		}
	})
}

// invokeCtl invokes app through a mount, Plan 9 style: open ctl for
// reading and writing, write the request, read the answer to its end from
// the same descriptor, close.
func invokeCtl(mnt, app string, in, buf []byte) ([]byte, error) {
	f, err := os.OpenFile(filepath.Join(mnt, "apps", app, "ctl"), os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	if _, err := f.Write(in); err != nil {
		f.Close()
		return nil, err
	}
	n := 0
	for range 64 {
		if n == len(buf) {
			break
		}
		m, err := f.Read(buf[n:])
		n += m
		if errors.Is(err, io.EOF) || (err == nil && m == 0) {
			break
		}
		if err != nil {
			f.Close()
			return nil, err
		}
	}
	return buf[:n], f.Close()
}

// whereFirst is the first line of an app's where through a mount.
func whereFirst(b *testing.B, mnt, app string) string {
	w, err := os.ReadFile(filepath.Join(mnt, "apps", app, "where"))
	if err != nil {
		b.Fatal(err)
	}
	first, _, _ := strings.Cut(string(w), "\n")
	return first
}

// Invocation latency of upper on 100 bytes through the client's mount,
// from Go (open ctl, write, read, close): sent on to the app edge, where
// upper is pinned (threshold 2 of 1 byte/s: the link is never slow), and
// run at the client from its downloaded copy (threshold 2 far above any
// link). Each reports its median and p99.
func BenchmarkMountInvoke(b *testing.B) {
	requireFUSE(b)
	h := start(b, Config{})
	input := bytes.Repeat([]byte("strata! "), 13)[:100]
	want := bytes.ToUpper(input)
	buf := make([]byte, 4<<10)
	invoke := func(b *testing.B, mnt string) {
		got, err := invokeCtl(mnt, "upper", input, buf)
		if err != nil || !bytes.Equal(got, want) {
			b.Fatalf("upper: %q %v", got, err)
		}
	}

	remoteMnt, _ := mountClient(b, h, "", 1)
	localMnt, lc := mountClient(b, h, "", 1<<50)
	// Past threshold 1 the client downloads upper; wait for the copy.
	for range tier.DefaultClientPullAfter + 1 {
		invoke(b, localMnt)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := lc.Tier().WaitHeld(ctx, "upper"); err != nil {
		b.Fatal(err)
	}
	// The first local run may wait for the copy's compile: bounded tries
	// until upper runs at the client.
	self := "client/" + h.Groups[0].Clients[0]
	for i := 0; ; i++ {
		_, err := invokeCtl(localMnt, "upper", input, buf)
		if err == nil && whereFirst(b, localMnt, "upper") == self {
			break
		}
		if i == 20 {
			b.Fatalf("upper does not run at the client: where %q, %v", whereFirst(b, localMnt, "upper"), err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	invoke(b, remoteMnt)
	if w := whereFirst(b, remoteMnt, "upper"); w != "appedge/"+h.Groups[0].Name {
		b.Fatalf("with threshold 2 at 1 byte/s upper ran at %q", w)
	}

	b.Run("remote-appedge", func(b *testing.B) {
		measure(b, func() { invoke(b, remoteMnt) })
		b.StopTimer()
		if w := whereFirst(b, remoteMnt, "upper"); w != "appedge/"+h.Groups[0].Name {
			b.Fatalf("upper ran at %q", w)
		}
	})
	b.Run("client-local", func(b *testing.B) {
		measure(b, func() { invoke(b, localMnt) })
		b.StopTimer()
		if w := whereFirst(b, localMnt, "upper"); w != self {
			b.Fatalf("upper ran at %q", w)
		}
	})
}
