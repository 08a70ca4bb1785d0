package fuse

import (
	"bytes"
	"context"
	"errors"
	iofs "io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"strata/fs"
	"strata/fs/memfs"
)

// probe watches the reads and writes that reach a tree, and can slow
// them down or fail them.
type probe struct {
	mu          sync.Mutex
	writing     int   // WriteAt calls under way
	maxWriting  int   // the most at once
	maxRead     int   // the longest ReadAt
	reads       int   // ReadAt calls
	failFrom    int64 // WriteAt at or past this offset fails (if > 0)
	writeDelay  time.Duration
	readDelay   time.Duration
	writesTotal int
}

func (p *probe) set(f func(p *probe)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f(p)
}

func (p *probe) get() probe {
	p.mu.Lock()
	defer p.mu.Unlock()
	return probe{writing: p.writing, maxWriting: p.maxWriting, maxRead: p.maxRead, reads: p.reads, writesTotal: p.writesTotal}
}

// probeDir is a tree whose files' handles report to a probe.
type probeDir struct {
	fs.Dir
	p *probe
}

type probeFile struct {
	fs.File
	p *probe
}

type probeHandle struct {
	fs.Handle
	p *probe
}

func (d probeDir) wrap(n fs.Node) fs.Node {
	switch n := n.(type) {
	case fs.Dir:
		return probeDir{n, d.p}
	case fs.File:
		return probeFile{n, d.p}
	}
	return n
}

func (d probeDir) Lookup(ctx context.Context, name string) (fs.Node, error) {
	n, err := d.Dir.Lookup(ctx, name)
	if err != nil {
		return nil, err
	}
	return d.wrap(n), nil
}

func (d probeDir) Create(ctx context.Context, name string, flag fs.Flag, perm iofs.FileMode) (fs.File, fs.Handle, error) {
	f, h, err := d.Dir.Create(ctx, name, flag, perm)
	if err != nil {
		return nil, nil, err
	}
	return probeFile{f, d.p}, &probeHandle{h, d.p}, nil
}

func (d probeDir) Mkdir(ctx context.Context, name string, perm iofs.FileMode) (fs.Dir, error) {
	n, err := d.Dir.Mkdir(ctx, name, perm)
	if err != nil {
		return nil, err
	}
	return probeDir{n, d.p}, nil
}

func (d probeDir) Rename(ctx context.Context, oldName string, newDir fs.Dir, newName string) error {
	if nd, ok := newDir.(probeDir); ok {
		newDir = nd.Dir
	}
	return d.Dir.Rename(ctx, oldName, newDir, newName)
}

func (f probeFile) Open(ctx context.Context, flag fs.Flag) (fs.Handle, error) {
	h, err := f.File.Open(ctx, flag)
	if err != nil {
		return nil, err
	}
	return &probeHandle{h, f.p}, nil
}

func (h *probeHandle) ReadAt(ctx context.Context, b []byte, off int64) (int, error) {
	h.p.mu.Lock()
	h.p.reads++
	h.p.maxRead = max(h.p.maxRead, len(b))
	delay := h.p.readDelay
	h.p.mu.Unlock()
	time.Sleep(delay)
	return h.Handle.ReadAt(ctx, b, off)
}

func (h *probeHandle) WriteAt(ctx context.Context, b []byte, off int64) (int, error) {
	h.p.mu.Lock()
	h.p.writing++
	h.p.writesTotal++
	h.p.maxWriting = max(h.p.maxWriting, h.p.writing)
	delay, fail := h.p.writeDelay, h.p.failFrom > 0 && off+int64(len(b)) > h.p.failFrom
	h.p.mu.Unlock()
	defer func() {
		h.p.mu.Lock()
		h.p.writing--
		h.p.mu.Unlock()
	}()
	time.Sleep(delay)
	if fail {
		return 0, &fs.Error{Op: "write", Kind: fs.NoSpace, Err: errors.New("the tree is full")}
	}
	return h.Handle.WriteAt(ctx, b, off)
}

// pattern is n bytes drawn from seed.
func pattern(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, 7))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func writeFileT(t *testing.T, p string, data []byte) {
	t.Helper()
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestWriteBehind: writes are answered before they reach the tree, a few
// at a time, and every later write, fsync and close reports one that
// failed; what comes after a write (a read, a stat, an open) sees it.
func TestWriteBehind(t *testing.T) {
	p := &probe{}
	root := probeDir{memfs.New(), p}
	log, _ := testLog(t)
	m, mp := mountT(t, root, Options{Log: log})

	// Many writes, a few of them under way at once, in order.
	p.set(func(p *probe) { p.writeDelay = 20 * time.Millisecond })
	data := pattern(1, 16<<20+12345)
	writeFileT(t, filepath.Join(mp, "big"), data)
	if got := treeBytes(t, root, "big"); !bytes.Equal(got, data) {
		t.Fatalf("the tree holds %d bytes, not the %d written", len(got), len(data))
	}
	if st := p.get(); st.maxWriting < 2 || st.maxWriting > behindWrites {
		t.Errorf("%d writes reached the tree at once at most; want 2 to %d", st.maxWriting, behindWrites)
	}

	// Overlapping writes under way land in the order they were made.
	f, err := os.OpenFile(filepath.Join(mp, "big"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	a, b := bytes.Repeat([]byte("a"), 1<<20), bytes.Repeat([]byte("b"), 1<<20)
	if _, err := f.WriteAt(a, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(b, 512<<10); err != nil {
		t.Fatal(err)
	}
	// A stat and a second descriptor see the writes under way.
	fi, err := os.Stat(filepath.Join(mp, "big"))
	if err != nil || fi.Size() != int64(len(data)) {
		t.Errorf("stat while writes are under way: %v, %v", fi, err)
	}
	g, err := os.Open(filepath.Join(mp, "big"))
	if err != nil {
		t.Fatal(err)
	}
	head := make([]byte, 2<<20)
	if _, err := g.ReadAt(head, 0); err != nil {
		t.Fatal(err)
	}
	g.Close()
	want := append(append(append([]byte{}, a[:512<<10]...), b...), data[3<<19:2<<20]...)
	if !bytes.Equal(head, want) {
		t.Errorf("a read through another descriptor does not see the writes just made")
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if got := treeBytes(t, root, "big")[:2<<20]; !bytes.Equal(got, want) {
		t.Errorf("overlapping writes reached the tree out of order")
	}

	// A write that fails: the next write, fsync and close fail with its
	// errno, ENOSPC.
	p.set(func(p *probe) { p.failFrom, p.writeDelay = 1<<20, time.Millisecond })
	f, err = os.Create(filepath.Join(mp, "full"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte("x"), 1<<20)
	var werr error
	for range 8 {
		if _, werr = f.Write(chunk); werr != nil {
			break
		}
	}
	t.Logf("write error: %v; writes at once at most: %d", werr, p.get().maxWriting)
	serr := f.Sync()
	cerr := f.Close()
	for what, err := range map[string]error{"fsync": serr, "close": cerr} {
		if !errors.Is(err, syscall.ENOSPC) {
			t.Errorf("%s after a failed write: %v, want ENOSPC", what, err)
		}
	}
	if werr != nil && !errors.Is(werr, syscall.ENOSPC) {
		t.Errorf("a write after a failed one: %v, want ENOSPC", werr)
	}

	// Without fsync: close reports it.
	f, err = os.Create(filepath.Join(mp, "full2"))
	if err != nil {
		t.Fatal(err)
	}
	f.Write(chunk)
	f.Write(chunk)
	if err := f.Close(); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("close after a failed write: %v, want ENOSPC", err)
	}
	p.set(func(p *probe) { p.failFrom, p.writeDelay = 0, 0 })

	// Nothing is left under way or held once the files are closed.
	waitFor(t, "the handles to close", func() bool {
		m.hmu.Lock()
		defer m.hmu.Unlock()
		return len(m.handles) == 0 && p.get().writing == 0
	})
}

// TestReadAhead: a sequential reader is answered from chunks read ahead,
// which a write through the mount makes stale; random reads and reads
// after the end are right.
func TestReadAhead(t *testing.T) {
	p := &probe{}
	tree := memfs.New()
	root := probeDir{tree, p}
	log, _ := testLog(t)
	m, mp := mountT(t, root, Options{Log: log})
	data := pattern(2, 9<<20+777)
	writeFileT(t, filepath.Join(mp, "f"), data)

	p.set(func(p *probe) { p.maxRead, p.reads = 0, 0 })
	got, err := os.ReadFile(filepath.Join(mp, "f"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes (%v), want the %d written", len(got), err, len(data))
	}
	if st := p.get(); st.maxRead != aheadChunk {
		t.Errorf("the longest read that reached the tree is %d bytes, want a chunk read ahead (%d)", st.maxRead, aheadChunk)
	}

	// A write through another descriptor while a reader is part way:
	// the reader sees it.
	r, err := os.Open(filepath.Join(mp, "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	buf := make([]byte, 128<<10)
	for off := int64(0); off < 2<<20; off += int64(len(buf)) {
		if _, err := r.ReadAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	w, err := os.OpenFile(filepath.Join(mp, "f"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fresh := bytes.Repeat([]byte("new!"), 64<<10)
	if _, err := w.WriteAt(fresh, 3<<20); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	copy(data[3<<20:], fresh)
	rest := make([]byte, len(data)-2<<20)
	if n, err := r.ReadAt(rest, 2<<20); n != len(rest) || !bytes.Equal(rest, data[2<<20:]) {
		t.Errorf("the reader after a write: %d bytes (%v), not what the file holds", n, err)
	}

	// Reads here and there, and past the end.
	rng := rand.New(rand.NewPCG(3, 3))
	for range 200 {
		off := rng.Int64N(int64(len(data)) + 4096)
		n := 1 + rng.IntN(300<<10)
		b := make([]byte, n)
		k, err := r.ReadAt(b, off)
		want := data[min(off, int64(len(data))):min(off+int64(n), int64(len(data)))]
		if k != len(want) || !bytes.Equal(b[:k], want) || (k < n && err == nil) {
			t.Fatalf("read %d at %d: %d bytes, %v; want %d", n, off, k, err, len(want))
		}
	}
	r.Close()
	waitFor(t, "the read-ahead to be given back", func() bool { return m.ahead.Load() == 0 })
}

// waitFor waits up to 10s for cond.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("waited 10s for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestKernelReadAhead: as root, the mount asks the kernel to read ahead
// kernelReadAhead bytes on its files.
func TestKernelReadAhead(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("only root may set a device's read-ahead")
	}
	_, mp := mountT(t, memfs.New(), Options{})
	info, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Skip("no /proc/self/mountinfo")
	}
	dev := ""
	for _, line := range strings.Split(string(info), "\n") {
		if f := strings.Fields(line); len(f) > 4 && unescapeMount(f[4]) == mp {
			dev = f[2]
		}
	}
	if dev == "" {
		t.Fatalf("%s is not in /proc/self/mountinfo", mp)
	}
	b, err := os.ReadFile("/sys/class/bdi/" + dev + "/read_ahead_kb")
	if err != nil {
		t.Skipf("no sysfs: %v", err)
	}
	if got, want := strings.TrimSpace(string(b)), strconv.Itoa(kernelReadAhead>>10); got != want {
		t.Errorf("read_ahead_kb of the mount is %s, want %s", got, want)
	}
}

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{
		`/mnt/plain`:          "/mnt/plain",
		`/mnt/with\040space`:  "/mnt/with space",
		`/a\011tab\134slash`:  "/a\ttab\\slash",
		`/trailing\04`:        `/trailing\04`,
		`/not\999octal\040ok`: `/not\999octal ok`,
	} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}
