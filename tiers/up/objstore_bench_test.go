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
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"strata/fs/objstore"
	"strata/fs/objstore/s3test"
	"strata/mount/fuse"
	clienttier "strata/tiers/client"
	"strata/tiers/keyring"
	"strata/tiers/tier"
)

// The client's FUSE mount with its edge's store on object storage (Versity
// Gateway on this machine's disk, over loopback) against the same mount
// with the edge's store on the local disk, and against the same bytes
// moved straight between a minio-go client and the gateway: the limit of
// anything that goes through S3. All three in one run of one test
// process.
//
//	go test -run '^$' -bench ObjectStore -benchtime 1x ./tiers/up/
//	STRATA_BENCH_MIB=16 STRATA_BENCH_FILES=500 go test -run '^$' -bench ObjectStore -benchtime 1x ./tiers/up/

// objBenchBucket is the bucket of the object-store benchmarks.
const objBenchBucket = "strata-bench"

// objBenchFiles is the size of the listed directory: STRATA_BENCH_FILES,
// or 10,000.
func objBenchFiles(b *testing.B) int { return benchSize(b, "STRATA_BENCH_FILES", 10_000, "files") }

// objBenchPair is a client's /store through its mount on two hierarchies,
// one whose edge keeps the store in the bucket, one on the local disk,
// with what lies behind each: the client's key prefix in the bucket and
// its directory on disk.
type objBenchPair struct {
	s3       *minio.Client
	prefix   string // the client's store in the bucket: stores/g1/CLIENT/
	obj      string // /store through the mount, on the object store
	local    string // /store through the mount, on the local disk
	localDir string // the local store's directory of the client
}

func startObjBenchPair(b *testing.B) objBenchPair {
	b.Helper()
	requireFUSE(b)
	g := s3test.Start(b, objBenchBucket)
	g.Env(b)
	cl, err := g.Client()
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	ho := start(b, Config{Dir: filepath.Join(dir, "objstore"), Store: g.URL(objBenchBucket, "stores")})
	objMnt := objMountClient(b, ho)
	hl := start(b, Config{Dir: filepath.Join(dir, "local")})
	localMnt := objMountClient(b, hl)
	p := objBenchPair{
		s3:     cl,
		prefix: "stores/" + ho.Groups[0].Name + "/" + ho.Groups[0].Clients[0] + "/",
		obj:    filepath.Join(objMnt, "store"),
		local:  filepath.Join(localMnt, "store"),
		// The edge keeps each client's store in store/CLIENT of its data
		// directory (tiers/edge), made at the client's first attach.
		localDir: filepath.Join(dir, "local", hl.Groups[0].Name, "edge", "store", hl.Groups[0].Clients[0]),
	}
	for _, d := range []string{p.obj, p.local, p.localDir} {
		if _, err := os.Stat(d); err != nil {
			b.Fatal(err)
		}
	}
	return p
}

// objMountClient is mountClient with the client's link to the edge as
// `strata mount` has it by default (each step bounded by
// remote.DefaultTimeout), and each call into the tree bounded by a minute
// instead of fuse.DefaultTimeout: reading a directory through the mount
// is one listing and then a walk of each name, which on the object store
// is a HEAD of each object, and 10,000 of them can take more than the
// default ten seconds on a slow machine (the read then fails with
// ETIMEDOUT), which would leave the row without a figure.
func objMountClient(b *testing.B, h *Hierarchy) string {
	b.Helper()
	g := h.Groups[0]
	name := g.Clients[0]
	c, err := clienttier.Start(context.Background(), clienttier.Config{
		Name:  name,
		Ports: tier.Ports{Local: "127.0.0.1:0"},
		Edge:  tier.Parent{Name: "edge/" + g.Name, Addr: g.Edge.Addr(), Dial: h.Keys.Dial(name, keyring.Client(name))},
		Data:  b.TempDir(), Refresh: time.Second, CallTimeout: 5 * time.Second,
		WasmCache: wasmCache,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c.Shutdown(ctx)
	})
	root, err := c.Tier().Root(context.Background(), name)
	if err != nil {
		b.Fatal(err)
	}
	mnt := filepath.Join(b.TempDir(), "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := fuse.Mount(ctx, root, mnt, fuse.Options{Timeout: time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := m.Unmount(); err != nil {
			exec.Command("fusermount3", "-u", "-z", mnt).Run()
		}
	})
	return mnt
}

// patternReader gives n bytes of buf over and over.
type patternReader struct {
	buf []byte
	n   int64
	off int64
}

func (r *patternReader) Read(p []byte) (int, error) {
	if r.off >= r.n {
		return 0, io.EOF
	}
	i := int(r.off % int64(len(r.buf)))
	m := copy(p[:min(int64(len(p)), r.n-r.off)], r.buf[i:])
	r.off += int64(m)
	return m, nil
}

// objPutOptions are those the edge's store uploads with.
var objPutOptions = minio.PutObjectOptions{ContentType: "application/octet-stream", PartSize: objstore.DefaultPartSize}

// Sequential read and write of one large file (256 MiB, or
// STRATA_BENCH_MIB) in 1 MiB buffers through the client's mount, with the
// edge's store on the object store (objstore-*) and on the local disk
// (local-*); and the same bytes with a minio-go client straight to and
// from the gateway (direct-*): GetObject read to its end, PutObject of a
// file on disk in parts of the size the store uses. A write through the
// mount includes fsync and close, which return once the object is in the
// bucket. The file read is put beforehand straight into the bucket and
// onto the disk.
func BenchmarkObjectStoreSeq(b *testing.B) {
	p := startObjBenchPair(b)
	size := int64(benchMiB(b)) << 20
	buf := make([]byte, 1<<20)
	fillPattern(buf, 3)
	ctx := context.Background()

	// The source of the direct writes: a file, as the store's staging is.
	src := filepath.Join(b.TempDir(), "source")
	if err := writeSeq(src, size, buf); err != nil {
		b.Fatal(err)
	}
	if err := writeSeq(filepath.Join(p.localDir, "seq-read"), size, buf); err != nil {
		b.Fatal(err)
	}
	if _, err := p.s3.PutObject(ctx, objBenchBucket, p.prefix+"seq-read", &patternReader{buf: buf, n: size}, size, objPutOptions); err != nil {
		b.Fatal(err)
	}
	for _, mnt := range []string{p.obj, p.local} {
		if fi, err := os.Stat(filepath.Join(mnt, "seq-read")); err != nil || fi.Size() != size {
			b.Fatalf("the file to read, through the mount: %v %v", fi, err)
		}
	}

	for _, m := range []struct{ name, mnt string }{{"objstore", p.obj}, {"local", p.local}} {
		b.Run(m.name+"-read", func(b *testing.B) {
			b.SetBytes(size)
			for range b.N {
				n, err := readSeq(filepath.Join(m.mnt, "seq-read"), buf, size)
				if err != nil || n != size {
					b.Fatalf("read %d of %d bytes: %v", n, size, err)
				}
			}
		})
	}
	b.Run("direct-read", func(b *testing.B) {
		b.SetBytes(size)
		for range b.N {
			n, err := objGet(ctx, p.s3, p.prefix+"seq-read", buf)
			if err != nil || n != size {
				b.Fatalf("read %d of %d bytes: %v", n, size, err)
			}
		}
	})

	for _, m := range []struct{ name, mnt string }{{"objstore", p.obj}, {"local", p.local}} {
		b.Run(m.name+"-write", func(b *testing.B) {
			b.SetBytes(size)
			for range b.N {
				if err := writeSeq(filepath.Join(m.mnt, "seq-write"), size, buf); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			if fi, err := os.Stat(filepath.Join(m.mnt, "seq-write")); err != nil || fi.Size() != size {
				b.Fatalf("after the writes: %v %v", fi, err)
			}
		})
	}
	oi, err := p.s3.StatObject(ctx, objBenchBucket, p.prefix+"seq-write", minio.StatObjectOptions{})
	if err != nil || oi.Size != size {
		b.Fatalf("the object written through the mount: %d bytes, %v", oi.Size, err)
	}
	b.Run("direct-write", func(b *testing.B) {
		b.SetBytes(size)
		for range b.N {
			if err := objPut(ctx, p.s3, p.prefix+"direct-write", src, size); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// objGet reads the object key to its end in reads of len(buf).
func objGet(ctx context.Context, cl *minio.Client, key string, buf []byte) (int64, error) {
	o, err := cl.GetObject(ctx, objBenchBucket, key, minio.GetObjectOptions{})
	if err != nil {
		return 0, err
	}
	defer o.Close()
	var n int64
	for {
		m, err := o.Read(buf)
		n += int64(m)
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// objPut uploads the file src as key.
func objPut(ctx context.Context, cl *minio.Client, key, src string, size int64) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	info, err := cl.PutObject(ctx, objBenchBucket, key, io.NewSectionReader(f, 0, size), size, objPutOptions)
	if err == nil && info.Size != size {
		err = fmt.Errorf("uploaded %d of %d bytes", info.Size, size)
	}
	return err
}

// `ls -l` of a directory of 10,000 files (or STRATA_BENCH_FILES) through
// the client's mount: read the directory (its share reported as
// readdir-ms), lstat each name; with the edge's store on the object store
// (objstore-ls) and on the local disk (local-ls). direct-ls is the listing of the same keys with a minio-go
// client (ListObjects, no HEAD of each). The files are put beforehand
// straight into the bucket and onto the disk.
func BenchmarkObjectStoreList(b *testing.B) {
	p := startObjBenchPair(b)
	files := objBenchFiles(b)
	ctx := context.Background()
	many := filepath.Join(p.localDir, "many")
	if err := os.Mkdir(many, 0o755); err != nil {
		b.Fatal(err)
	}
	for i := range files {
		if err := os.WriteFile(filepath.Join(many, fmt.Sprintf("file-%05d", i)), []byte(strconv.Itoa(i)), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	if err := objPutMany(ctx, p.s3, p.prefix+"many/", files); err != nil {
		b.Fatal(err)
	}

	for _, m := range []struct{ name, mnt string }{{"objstore", p.obj}, {"local", p.local}} {
		b.Run(m.name+"-ls", func(b *testing.B) {
			dir := filepath.Join(m.mnt, "many")
			var readdir time.Duration
			for range b.N {
				t0 := time.Now()
				ents, err := os.ReadDir(dir)
				readdir += time.Since(t0)
				if err != nil || len(ents) != files {
					b.Fatalf("listed %d of %d: %v", len(ents), files, err)
				}
				for _, e := range ents {
					if _, err := os.Lstat(filepath.Join(dir, e.Name())); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(readdir.Milliseconds())/float64(b.N), "readdir-ms")
		})
	}
	b.Run("direct-ls", func(b *testing.B) {
		for range b.N {
			n := 0
			for o := range p.s3.ListObjects(ctx, objBenchBucket, minio.ListObjectsOptions{Prefix: p.prefix + "many/"}) {
				if o.Err != nil {
					b.Fatal(o.Err)
				}
				n++
			}
			if n != files+1 { // and the directory's marker
				b.Fatalf("listed %d of %d", n, files+1)
			}
		}
	})
}

// objPutMany puts the directory marker dir and n small objects under it,
// 16 at a time.
func objPutMany(ctx context.Context, cl *minio.Client, dir string, n int) error {
	if _, err := cl.PutObject(ctx, objBenchBucket, dir, bytes.NewReader(nil), 0, minio.PutObjectOptions{}); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	next := make(chan int)
	errs := make(chan error, 16)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				data := []byte(strconv.Itoa(i))
				key := fmt.Sprintf("%sfile-%05d", dir, i)
				if _, err := cl.PutObject(ctx, objBenchBucket, key, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
					errs <- fmt.Errorf("put %s: %w", key, err)
					cancel()
					return
				}
			}
		}()
	}
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
		}
	}
	close(next)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return ctx.Err()
	}
}
