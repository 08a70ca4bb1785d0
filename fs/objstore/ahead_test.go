package objstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"strata/fs"
)

// ranged is a transport that counts the ranged GETs of each block (a GET
// of a range of several blocks counts for each), and may hold some of
// them until their request ends, or answer them with an S3 error.
type ranged struct {
	base http.RoundTripper
	bs   int64

	mu   sync.Mutex
	gets map[int64]int // by block

	held  atomic.Int32 // requests held now
	hold  atomic.Pointer[func(block int64) bool]
	fail  atomic.Pointer[func(from, to int64) bool] // by the blocks of the range
	count atomic.Int64                              // ranged GETs
}

func newRanged(t testing.TB, bs int64) *ranged {
	base, err := minio.DefaultTransport(false)
	if err != nil {
		t.Fatal(err)
	}
	return &ranged{base: base, bs: bs, gets: map[int64]int{}}
}

func (r *ranged) RoundTrip(req *http.Request) (*http.Response, error) {
	rg, ok := strings.CutPrefix(req.Header.Get("Range"), "bytes=")
	if req.Method != http.MethodGet || !ok {
		return r.base.RoundTrip(req)
	}
	from, to, _ := strings.Cut(rg, "-")
	off, err := strconv.ParseInt(from, 10, 64)
	if err != nil {
		return nil, err
	}
	end, err := strconv.ParseInt(to, 10, 64)
	if err != nil {
		return nil, err
	}
	block, last := off/r.bs, end/r.bs
	r.mu.Lock()
	for b := block; b <= last; b++ {
		r.gets[b]++
	}
	r.mu.Unlock()
	r.count.Add(1)
	if fn := r.hold.Load(); fn != nil && (*fn)(block) {
		r.held.Add(1)
		defer r.held.Add(-1)
		<-req.Context().Done()
		return nil, req.Context().Err()
	}
	if fn := r.fail.Load(); fn != nil && (*fn)(block, last) {
		body := `<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidRange</Code><Message>injected failure</Message></Error>`
		return &http.Response{
			StatusCode: http.StatusBadRequest, Status: "400 Bad Request", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header:  http.Header{"Content-Type": {"application/xml"}},
			Body:    io.NopCloser(strings.NewReader(body)),
			Request: req, ContentLength: int64(len(body)),
		}, nil
	}
	return r.base.RoundTrip(req)
}

// snapshot returns the GETs of each block so far.
func (r *ranged) snapshot() map[int64]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.gets)
}

// aheadStore opens a store in a new bucket, in blocks of bs, with its
// requests through a ranged transport, and puts the object name there,
// of size bytes, behind the store's back. It returns the object's bytes.
func aheadStore(t *testing.T, bs, size int64, name string) (*Store, *ranged, []byte) {
	t.Helper()
	cfg := config(t, newBucket(t), "ra")
	cfg.BlockSize = bs
	tr := newRanged(t, bs)
	cfg.transport = tr
	data := make([]byte, size)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	putRaw(t, cfg.Bucket, "ra/"+name, data)
	return openStore(t, cfg), tr, data
}

// openFile opens the file at p of s.
func openFile(t *testing.T, s *Store, p string, flag fs.Flag) fs.Handle {
	t.Helper()
	n, err := fs.Walk(ctx, s.Root(), p)
	if err != nil {
		t.Fatal(err)
	}
	h, err := n.(fs.File).Open(ctx, flag)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// readBlock reads n bytes at off through h and checks them against want.
func readBlock(t *testing.T, h fs.Handle, want []byte, off, n int64) {
	t.Helper()
	n = min(n, int64(len(want))-off)
	buf := make([]byte, n)
	got, err := h.ReadAt(ctx, buf, off)
	if (err != nil && !errors.Is(err, io.EOF)) || int64(got) != n {
		t.Fatalf("read %d bytes at %d: %d, %v", n, off, got, err)
	}
	if !bytes.Equal(buf, want[off:off+n]) {
		t.Fatalf("read at %d: wrong bytes", off)
	}
}

// waitFor waits up to five seconds for cond.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("waited 5s for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// checkSettled checks that s has no read-ahead in progress and holds no
// data ahead of readers, once every handle is closed.
func checkSettled(t *testing.T, s *Store) {
	t.Helper()
	if st := s.cache.aheadStats(); st.running != 0 || st.aheadBytes != 0 {
		t.Errorf("after the handles closed: %d loads ahead in progress, %d bytes held ahead", st.running, st.aheadBytes)
	}
}

// TestReadAheadSequential: a sequential reader misses the cache on its
// first blocks only; every later block was loaded ahead, each with one
// GET, also with reads smaller than a block and reads that arrive
// several at a time, out of order.
func TestReadAheadSequential(t *testing.T) {
	const bs = 16 << 10
	const blocks = 40
	size := int64(blocks*bs - 1000) // a short last block
	s, tr, data := aheadStore(t, bs, size, "seq")

	t.Run("blocks", func(t *testing.T) {
		h := openFile(t, s, "seq", fs.ReadOnly)
		for off := int64(0); off < size; off += bs {
			readBlock(t, h, data, off, bs)
		}
		if err := h.Close(ctx); err != nil {
			t.Fatal(err)
		}
		_, _, misses := s.cache.stats()
		st := s.cache.aheadStats()
		if misses > 2 {
			t.Errorf("%d of %d blocks missed the cache, want at most 2", misses, blocks)
		}
		if st.runs < blocks-2 || st.used < blocks-2 {
			t.Errorf("%d blocks loaded ahead and %d of them read, want %d", st.runs, st.used, blocks-2)
		}
		if gets := tr.snapshot(); len(gets) != blocks || slices.Max(slices.Collect(maps.Values(gets))) != 1 {
			t.Errorf("GETs by block: %v; want one of each of %d blocks", gets, blocks)
		}
		checkSettled(t, s)
	})

	// Again, from another edge's cache: reads of a third of a block.
	t.Run("small reads", func(t *testing.T) {
		s2 := openStore(t, s.cfg)
		h := openFile(t, s2, "seq", fs.ReadOnly)
		for off := int64(0); off < size; off += bs / 3 {
			readBlock(t, h, data, off, bs/3)
		}
		h.Close(ctx)
		if _, _, misses := s2.cache.stats(); misses > 1 {
			t.Errorf("%d of %d blocks missed the cache, want at most 1", misses, blocks)
		}
		checkSettled(t, s2)
	})

	// Four reads at a time, in any order, as from a kernel's own
	// read-ahead.
	t.Run("concurrent reads", func(t *testing.T) {
		s3 := openStore(t, s.cfg)
		before := tr.snapshot()
		h := openFile(t, s3, "seq", fs.ReadOnly)
		for off := int64(0); off < size; off += 4 * bs {
			var wg sync.WaitGroup
			for i := range int64(4) {
				if o := off + i*bs; o < size {
					wg.Go(func() { readBlock(t, h, data, o, bs) })
				}
			}
			wg.Wait()
		}
		h.Close(ctx)
		if _, _, misses := s3.cache.stats(); misses > 8 {
			t.Errorf("%d of %d blocks missed the cache, want at most 8", misses, blocks)
		}
		for b, n := range tr.snapshot() {
			if n != before[b]+1 {
				t.Errorf("block %d got %d times, want once", b, n-before[b])
			}
		}
		checkSettled(t, s3)
	})
}

// TestReadAheadRandom: reads at scattered offsets load nothing ahead.
func TestReadAheadRandom(t *testing.T) {
	const bs = 16 << 10
	const blocks = 64
	s, tr, data := aheadStore(t, bs, blocks*bs, "rand")
	h := openFile(t, s, "rand", fs.ReadOnly)
	const reads = 40
	for i := range int64(reads) {
		block := i * 37 % blocks // each read 27 or 37 blocks away from the last
		readBlock(t, h, data, block*bs+100, 1000)
	}
	h.Close(ctx)
	_, _, misses := s.cache.stats()
	if st := s.cache.aheadStats(); st.runs != 0 {
		t.Errorf("%d blocks loaded ahead of a random reader", st.runs)
	}
	if n := tr.count.Load(); n != misses || n != reads {
		t.Errorf("%d GETs and %d misses for %d reads of distinct blocks", n, misses, reads)
	}
	checkSettled(t, s)
}

// TestReadAheadEnds: closing a handle, or the store, cancels its loads
// ahead and waits for them; a reader waits for the load of the block it
// reads, and a load ahead that fails leaves the block to the reader, who
// reports the error.
func TestReadAheadEnds(t *testing.T) {
	const bs = 16 << 10
	const blocks = 32
	s, tr, data := aheadStore(t, bs, blocks*bs, "f")
	hold := func(block int64) bool { return block >= 2 }
	tr.hold.Store(&hold)

	// Two reads start the loads of the window ahead, all held by the
	// server.
	runs := int32((aheadWindow + aheadRun - 1) / aheadRun)
	h := openFile(t, s, "f", fs.ReadOnly)
	readBlock(t, h, data, 0, bs)
	readBlock(t, h, data, bs, bs)
	waitFor(t, "the loads ahead", func() bool { return tr.held.Load() == runs })
	if st := s.cache.aheadStats(); st.running != aheadWindow {
		t.Errorf("%d loads ahead, want %d", st.running, aheadWindow)
	}
	// A read of a block being loaded waits for that load: no second GET.
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	_, err := h.ReadAt(short, make([]byte, bs), 2*bs)
	cancel()
	wantKind(t, "a read waiting for a held load", err, fs.Timeout)
	if gets := tr.snapshot(); gets[2] != 1 {
		t.Errorf("block 2 got %d times, want once", gets[2])
	}
	start := time.Now()
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("close took %v: its loads ahead ran to their deadline", d)
	}
	checkSettled(t, s)
	waitFor(t, "the held requests to end", func() bool { return tr.held.Load() == 0 })

	// The store's Close ends the loads of handles left open.
	s2 := openStore(t, s.cfg)
	h = openFile(t, s2, "f", fs.ReadOnly)
	readBlock(t, h, data, 0, bs)
	readBlock(t, h, data, bs, bs)
	waitFor(t, "the loads ahead", func() bool { return tr.held.Load() == runs })
	start = time.Now()
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the store's close took %v", d)
	}
	checkSettled(t, s2)
	waitFor(t, "the held requests to end", func() bool { return tr.held.Load() == 0 })
	tr.hold.Store(nil)

	// A load ahead that fails is forgotten: the reader loads the blocks.
	s3 := openStore(t, s.cfg)
	before := tr.snapshot()
	before5 := before[5]
	var failed atomic.Bool
	first := func(from, to int64) bool { return from <= 5 && 5 <= to && !failed.Swap(true) }
	tr.fail.Store(&first)
	h = openFile(t, s3, "f", fs.ReadOnly)
	for off := int64(0); off < blocks*bs; off += bs {
		readBlock(t, h, data, off, bs)
	}
	h.Close(ctx)
	if gets := tr.snapshot(); gets[5]-before5 != 2 {
		t.Errorf("block 5 got %d times, want twice (ahead, failing, then by the reader)", gets[5]-before5)
	}
	checkSettled(t, s3)

	// If the reader's own load fails too, the read reports it.
	s4 := openStore(t, s.cfg)
	always := func(from, to int64) bool { return from <= 5 && 5 <= to }
	tr.fail.Store(&always)
	h = openFile(t, s4, "f", fs.ReadOnly)
	for off := int64(0); off < 5*bs; off += bs {
		readBlock(t, h, data, off, bs)
	}
	_, err = h.ReadAt(ctx, make([]byte, bs), 5*bs)
	wantKind(t, "a read of a block that fails to load", err, fs.Invalid)
	tr.fail.Store(nil)
	readBlock(t, h, data, 5*bs, bs) // the failure was not kept
	h.Close(ctx)
	checkSettled(t, s4)
}

// TestReadAheadRewrite: what was loaded ahead never stands in for a newer
// version: a reader of the old version reads the old bytes or fails; a
// new open, or a handle that wrote, reads the new bytes.
func TestReadAheadRewrite(t *testing.T) {
	const bs = 16 << 10
	const blocks = 32
	s, _, v1 := aheadStore(t, bs, blocks*bs, "f")
	v2 := bytes.Repeat([]byte("2"), len(v1))

	old := openFile(t, s, "f", fs.ReadOnly)
	for off := int64(0); off < 4*bs; off += bs {
		readBlock(t, old, v1, off, bs)
	}
	waitFor(t, "the loads ahead", func() bool { return s.cache.aheadStats().running == 0 })
	// Rewritten through another handle, of the same size.
	put(t, s.Root(), "f", v2)
	expect(t, s.Root(), "f", string(v2))

	failed := false
	for off := int64(4 * bs); off < blocks*bs; off += bs {
		buf := make([]byte, bs)
		_, err := old.ReadAt(ctx, buf, off)
		if err != nil {
			wantKind(t, fmt.Sprintf("the old version at %d", off), err, fs.IO)
			failed = true
			continue
		}
		if !bytes.Equal(buf, v1[off:off+bs]) {
			t.Fatalf("the old version's reader read other bytes at %d", off)
		}
	}
	if !failed {
		t.Errorf("the old version's reader read it whole after the rewrite")
	}
	old.Close(ctx)

	// A handle that reads ahead, then writes, reads what it wrote.
	rw := openFile(t, s, "f", fs.ReadWrite)
	for off := int64(0); off < 3*bs; off += bs {
		readBlock(t, rw, v2, off, bs)
	}
	v3 := bytes.Clone(v2)
	copy(v3[5*bs:], bytes.Repeat([]byte("3"), bs))
	write(t, rw, v3[5*bs:6*bs], 5*bs)
	for off := int64(3 * bs); off < blocks*bs; off += bs {
		readBlock(t, rw, v3, off, bs)
	}
	if err := rw.Close(ctx); err != nil {
		t.Fatal(err)
	}
	expect(t, s.Root(), "f", string(v3))
	checkSettled(t, s)
}
