package remote

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hugelgupf/p9/p9"

	"strata/fs/store"
)

// BenchmarkPeers puts Strata's store export next to two other 9P2000.L
// servers, driven by the same client (hugelgupf/p9's, in the same way,
// at the same msize), with raw loopback TCP moving the same bytes as the
// limit:
//
//   - strata: this project's 9P front end (fs/ninep) over its durable
//     store (fs/store), as an edge exports /store;
//   - p9ufs: hugelgupf/p9's own server over a plain directory
//     (go install github.com/hugelgupf/p9/cmd/p9ufs@v0.3.0), found through
//     STRATA_P9UFS or PATH;
//   - diod: Debian's diod over a plain directory, without authentication
//     (apt-get install diod), found through STRATA_DIOD or PATH;
//   - rawtcp: a loopback TCP connection.
//
// Each has three rows: seqread (one file read from start to end),
// seqwrite (a new file written, fsynced and closed: acknowledged data on
// every server) and randread4k (4 KiB reads at random 4 KiB-aligned
// offsets of the file, one at a time, the same offsets for all). Files are
// 256 MiB (STRATA_BENCH_MIB) and a randread4k op is 20000 reads
// (STRATA_BENCH_READS); STRATA_BENCH_SHORT=1 makes them 8 MiB and 200.
// Each row reports MB/s; randread4k also reads/s and every 9P row the
// msize the server agreed to (msize-KiB).
//
//	go test -run '^$' -bench Peers -benchtime 2x ./mount/remote
//
// The client asks every server for a 1 MiB msize. Two things about
// hugelgupf/p9's client shape how it is driven, the same way for all
// three servers:
//   - it offers "9P2000.L.Google.7" and attaches with no user, which
//     diod refuses; so its connection is wrapped (plainConn) to offer
//     "9P2000.L" and name this process's uid, for all three servers;
//   - it ignores the msize the server answers and sends messages of the
//     msize it asked for. So the agreed msize is read first on a probe
//     connection (probeMsize) and the client is made with that.
func BenchmarkPeers(b *testing.B) {
	sz := peerSizesFromEnv(b)
	data := make([]byte, sz.file)
	for i := range data {
		data[i] = byte(i>>12) ^ byte(i)
	}
	// The same offsets, in the same order, for every server.
	rng := rand.New(rand.NewPCG(1, 2))
	offs := make([]int64, sz.reads)
	for i := range offs {
		offs[i] = rng.Int64N(sz.file/peerRandSize) * peerRandSize
	}

	b.Run("rawtcp", func(b *testing.B) {
		b.Run("seqread", func(b *testing.B) { rawTCPSized(b, len(data), peerChunk, false) })
		b.Run("seqwrite", func(b *testing.B) { rawTCPSized(b, len(data), peerChunk, true) })
		b.Run("randread4k", func(b *testing.B) { rawPeerRand(b, data, offs) })
	})
	for _, s := range []struct {
		name  string
		start func(b *testing.B, dir string) (addr, aname string)
	}{
		{"strata", startStrataPeer},
		{"p9ufs", startP9ufsPeer},
		{"diod", startDiodPeer},
	} {
		b.Run(s.name, func(b *testing.B) {
			dir := b.TempDir()
			// The file read is written straight to the exported
			// directory, so it is in the page cache for every server.
			if err := os.WriteFile(filepath.Join(dir, "big"), data, 0o644); err != nil {
				b.Fatal(err)
			}
			addr, aname := s.start(b, dir)
			msize, err := probeMsize(addr, peerMsize)
			if err != nil {
				b.Fatalf("%s at %s: %v", s.name, addr, err)
			}
			root := peerClient(b, addr, aname, msize, sz.deadline)
			seq := 0
			b.Run("seqread", func(b *testing.B) { peerSeqRead(b, root, sz.file, msize) })
			b.Run("seqwrite", func(b *testing.B) { peerSeqWrite(b, root, dir, &seq, data, msize) })
			b.Run("randread4k", func(b *testing.B) { peerRandRead(b, root, offs, msize) })
		})
	}
}

const (
	peerMsize    = 1 << 20 // what the client asks every server for
	peerRandSize = 4 << 10 // one random read
	peerChunk    = 1 << 20 // one read or write of raw TCP's sequential rows
)

type peerSizes struct {
	file     int64
	reads    int
	deadline time.Duration // bound on each connection's whole life
}

func peerSizesFromEnv(b *testing.B) peerSizes {
	if os.Getenv("STRATA_BENCH_SHORT") != "" {
		return peerSizes{file: 8 << 20, reads: 200, deadline: 2 * time.Minute}
	}
	s := peerSizes{file: 256 << 20, reads: 20000, deadline: 30 * time.Minute}
	for _, v := range []struct {
		env string
		set func(int)
	}{
		{"STRATA_BENCH_MIB", func(n int) { s.file = int64(n) << 20 }},
		{"STRATA_BENCH_READS", func(n int) { s.reads = n }},
	} {
		if e := os.Getenv(v.env); e != "" {
			n, err := strconv.Atoi(e)
			if err != nil || n <= 0 {
				b.Fatalf("%s=%q: want a positive number", v.env, e)
			}
			v.set(n)
		}
	}
	return s
}

// msgData is the most data the client puts in one Tread or Twrite at
// msize: it cuts larger calls at the msize less its largest fixed part,
// rounded down to 512 bytes, which is msize-512 for these msizes.
func msgData(msize uint32) int { return int(msize) - 512 }

// peerMetrics reports the msize and, for n random reads per op, reads/s.
func peerMetrics(b *testing.B, msize uint32, reads int) {
	if msize > 0 {
		b.ReportMetric(float64(msize)/1024, "msize-KiB")
	}
	if reads > 0 && b.Elapsed() > 0 {
		b.ReportMetric(float64(reads*b.N)/b.Elapsed().Seconds(), "reads/s")
	}
}

// peerSeqRead reads the file "big" from start to end on one open fid, in
// calls of msgData(msize) bytes: one Tread each.
func peerSeqRead(b *testing.B, root p9.File, size int64, msize uint32) {
	_, f, err := root.Walk([]string{"big"})
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if _, _, err := f.Open(p9.ReadOnly); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, msgData(msize))
	b.SetBytes(size)
	b.ResetTimer()
	for range b.N {
		var off int64
		for off < size {
			n, err := f.ReadAt(buf, off)
			off += int64(n)
			if err == io.EOF || n == 0 && err == nil {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
		}
		if off != size {
			b.Fatalf("read %d of %d bytes", off, size)
		}
	}
	b.StopTimer()
	peerMetrics(b, msize, 0)
}

// peerSeqWrite creates a new file, writes data to it in calls of
// msgData(msize) bytes (one Twrite each), fsyncs and closes it. Each
// iteration makes a file of a new name in dir, the directory the server
// exports, and the previous one is removed from the disk outside the
// timing: p9ufs cannot remove files and diod does not implement
// Tunlinkat. *seq numbers the files.
func peerSeqWrite(b *testing.B, root p9.File, dir string, seq *int, data []byte, msize uint32) {
	chunk := msgData(msize)
	name := ""
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		if name != "" {
			if err := os.Remove(filepath.Join(dir, name)); err != nil {
				b.Fatal(err)
			}
		}
		*seq++
		name = fmt.Sprintf("w%d", *seq)
		b.StartTimer()
		_, f, err := root.Walk(nil)
		if err != nil {
			b.Fatal(err)
		}
		if _, _, _, err := f.Create(name, p9.WriteOnly, 0o644, p9.NoUID, p9.NoGID); err != nil {
			b.Fatal(err)
		}
		for off := 0; off < len(data); off += chunk {
			p := data[off:min(off+chunk, len(data))]
			if n, err := f.WriteAt(p, int64(off)); err != nil || n != len(p) {
				b.Fatalf("wrote %d of %d bytes at %d: %v", n, len(p), off, err)
			}
		}
		if err := f.FSync(); err != nil {
			b.Fatal(err)
		}
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	_, f, err := root.Walk([]string{name})
	if err != nil {
		b.Fatal(err)
	}
	_, _, attr, err := f.GetAttr(p9.AttrMask{Size: true})
	f.Close()
	if err != nil || attr.Size != uint64(len(data)) {
		b.Fatalf("after the writes: size %d, %v", attr.Size, err)
	}
	if err := os.Remove(filepath.Join(dir, name)); err != nil {
		b.Fatal(err)
	}
	peerMetrics(b, msize, 0)
}

// peerRandRead reads 4 KiB at each offset in offs, one read at a time,
// on one open fid.
func peerRandRead(b *testing.B, root p9.File, offs []int64, msize uint32) {
	_, f, err := root.Walk([]string{"big"})
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if _, _, err := f.Open(p9.ReadOnly); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, peerRandSize)
	b.SetBytes(int64(len(offs)) * peerRandSize)
	b.ResetTimer()
	for range b.N {
		for _, off := range offs {
			if n, err := f.ReadAt(buf, off); n != len(buf) || err != nil && err != io.EOF {
				b.Fatalf("read %d bytes at %d: %v", n, off, err)
			}
		}
	}
	b.StopTimer()
	peerMetrics(b, msize, len(offs))
}

// peerClient connects hugelgupf/p9's client at msize through plainConn
// and attaches to aname. The connection's deadline bounds every round
// trip of the benchmark (the client has no timeouts of its own).
func peerClient(b *testing.B, addr, aname string, msize uint32, deadline time.Duration) p9.File {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(deadline))
	cl, err := p9.NewClient(&plainConn{Conn: c}, p9.WithMessageSize(msize))
	if err != nil {
		c.Close()
		b.Fatalf("p9.NewClient to %s: %v", addr, err)
	}
	b.Cleanup(func() { cl.Close() })
	root, err := cl.Attach(aname)
	if err != nil {
		b.Fatalf("attach %q at %s: %v", aname, addr, err)
	}
	b.Cleanup(func() { root.Close() })
	return root
}

// plainConn is the client's connection, rewritten where hugelgupf/p9's
// client differs from a plain 9P2000.L client such as Linux's v9fs:
//   - its Tversion offers "9P2000.L.Google.7", and it steps down only when
//     the answer is EAGAIN; diod answers anything but "9P2000.L" with EIO.
//     plainConn offers "9P2000.L", which all three servers accept, and the
//     client then speaks standard 9P2000.L (Tlcreate, not Google's
//     Tucreate) to all three;
//   - its Tattach names no user (uname "", n_uname none); diod refuses
//     that with EIO ("user lookup"). plainConn names this process's uid,
//     as v9fs names the mounting user; Strata and p9ufs ignore it.
//
// It also gives each message to the kernel in as few writes as a bare
// connection would: the client writes a message as a header, a fixed part
// and a payload, which a bare TCP connection sends with one writev
// (net.Buffers) but a wrapped one gets as separate writes. So plainConn
// holds the pieces until the message is whole, except that a payload of
// 4 KiB or more (a Twrite's data) goes in a write of its own, after the
// rest, without a copy.
type plainConn struct {
	net.Conn
	pending []byte // the start of the message being written
	left    int    // bytes of it not yet given to Write
}

const plainConnDirect = 4 << 10 // a piece this large is written as it is

func (c *plainConn) Write(p []byte) (int, error) {
	start := c.left == 0
	if start {
		if len(p) < 7 {
			return 0, fmt.Errorf("plainConn: a message begins with a write of %d bytes", len(p))
		}
		c.left = int(binary.LittleEndian.Uint32(p))
	}
	if len(p) > c.left {
		return 0, fmt.Errorf("plainConn: a write of %d bytes past the message's end", len(p))
	}
	c.left -= len(p)
	if c.left > 0 && (start || c.left < plainConnDirect) {
		c.pending = append(c.pending, p...)
		return len(p), nil
	}
	msg := p
	if len(c.pending) > 0 {
		c.pending = append(c.pending, p...)
		msg = c.pending
		switch {
		case c.left > 0:
		case msg[4] == 100 && len(msg) >= 13: // Tversion
			msg = tversionFrame(binary.LittleEndian.Uint16(msg[5:]), binary.LittleEndian.Uint32(msg[7:]), "9P2000.L")
		case msg[4] == 104 && len(msg) >= 7+4+4+2+2+4: // Tattach: ... n_uname[4] at the end
			if binary.LittleEndian.Uint32(msg[len(msg)-4:]) == uint32(p9.NoUID) {
				binary.LittleEndian.PutUint32(msg[len(msg)-4:], uint32(os.Getuid()))
			}
		}
	}
	_, err := c.Conn.Write(msg)
	c.pending = c.pending[:0]
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// tversionFrame is a Tversion message.
func tversionFrame(tag uint16, msize uint32, version string) []byte {
	m := make([]byte, 13+len(version))
	binary.LittleEndian.PutUint32(m, uint32(len(m)))
	m[4] = 100
	binary.LittleEndian.PutUint16(m[5:], tag)
	binary.LittleEndian.PutUint32(m[7:], msize)
	binary.LittleEndian.PutUint16(m[11:], uint16(len(version)))
	copy(m[13:], version)
	return m
}

// probeMsize asks the 9P2000.L server at addr for msize on a connection
// of its own and returns the msize it agrees to.
func probeMsize(addr string, msize uint32) (uint32, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(tversionFrame(0xffff, msize, "9P2000.L")); err != nil {
		return 0, err
	}
	var hdr [7]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return 0, fmt.Errorf("Tversion: %w", err)
	}
	size := binary.LittleEndian.Uint32(hdr[:])
	if size < 13 || size > 1024 {
		return 0, fmt.Errorf("Tversion: a reply of %d bytes", size)
	}
	body := make([]byte, size-7)
	if _, err := io.ReadFull(c, body); err != nil {
		return 0, fmt.Errorf("Tversion: %w", err)
	}
	if hdr[4] != 101 {
		return 0, fmt.Errorf("Tversion: reply of type %d: % x", hdr[4], body)
	}
	if v := string(body[6:]); v != "9P2000.L" {
		return 0, fmt.Errorf("Tversion: server answers version %q", v)
	}
	return min(msize, binary.LittleEndian.Uint32(body)), nil
}

// startStrataPeer serves the store in dir with fs/ninep.
func startStrataPeer(b *testing.B, dir string) (string, string) {
	s, err := store.Open(dir, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return serve(b, s.Root()), ""
}

// startP9ufsPeer serves dir with hugelgupf/p9's p9ufs.
func startP9ufsPeer(b *testing.B, dir string) (string, string) {
	bin := peerBinary(b, "STRATA_P9UFS", "p9ufs",
		"go install github.com/hugelgupf/p9/cmd/p9ufs@v0.3.0 (or bash scripts/bench, which does) and set STRATA_P9UFS to the binary")
	return startPeerProcess(b, "p9ufs", func(addr string) *osexec.Cmd {
		return osexec.Command(bin, "-root", dir, addr)
	}), ""
}

// startDiodPeer serves dir with diod, in the foreground, without
// authentication and without reading /etc/diod.conf. diod names an export
// by its path: the client attaches with aname dir.
func startDiodPeer(b *testing.B, dir string) (string, string) {
	bin := peerBinary(b, "STRATA_DIOD", "diod",
		"apt-get install diod (or bash scripts/bench, which does) and set STRATA_DIOD to /usr/sbin/diod")
	return startPeerProcess(b, "diod", func(addr string) *osexec.Cmd {
		return osexec.Command(bin, "-f", "-n", "-c", "/dev/null", "-L", "stderr", "-l", addr, "-e", dir)
	}), dir
}

// peerBinary is the program named by env, or name on PATH; without
// either the benchmark is skipped with how to install it.
func peerBinary(b *testing.B, env, name, install string) string {
	if p := os.Getenv(env); p != "" {
		if _, err := os.Stat(p); err != nil {
			b.Fatalf("%s=%s: %v", env, p, err)
		}
		return p
	}
	p, err := osexec.LookPath(name)
	if err != nil {
		b.Skipf("%s is not installed: %s", name, install)
	}
	return p
}

// startPeerProcess starts the server that cmd makes for a loopback
// address, waits until it accepts connections and stops it at the end of
// the benchmark. A free port is picked by listening on port 0 and closing
// the listener; should another program take it first, up to 3 ports are
// tried.
func startPeerProcess(b *testing.B, name string, cmd func(addr string) *osexec.Cmd) string {
	var why error
	for range 3 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		c := cmd(addr)
		var log peerLog
		c.Stdout, c.Stderr = &log, &log
		// Should the benchmark die, the server goes with it.
		c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := c.Start(); err != nil {
			b.Fatalf("starting %s: %v", name, err)
		}
		exited := make(chan error, 1)
		go func() { exited <- c.Wait() }()
		stop := func() {
			c.Process.Kill()
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				b.Errorf("%s (pid %d) did not exit after SIGKILL", name, c.Process.Pid)
			}
		}
		if why = waitListening(addr, exited); why == nil {
			b.Cleanup(func() {
				stop()
				if b.Failed() {
					b.Logf("%s's output:\n%s", name, log.String())
				}
			})
			return addr
		}
		stop()
		why = fmt.Errorf("%w; its output:\n%s", why, log.String())
	}
	b.Fatalf("%s did not start: %v", name, why)
	return ""
}

// waitListening waits up to 10 s for addr to accept a connection, or
// for the process to exit.
func waitListening(addr string, exited <-chan error) error {
	for range 200 {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case err := <-exited:
			return fmt.Errorf("exited: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("nothing listens at %s after 10 s", addr)
}

// peerLog keeps the first 64 KiB a server prints.
type peerLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *peerLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p[:min(len(p), max(0, 64<<10-l.buf.Len()))])
	return len(p), nil
}

func (l *peerLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// rawPeerRand asks for 4 KiB at each offset of offs, one at a time: 8
// bytes of offset out, 4 KiB of the data back.
func rawPeerRand(b *testing.B, data []byte, offs []int64) {
	c := rawPeer(b, func(s net.Conn) {
		var req [8]byte
		for {
			if _, err := io.ReadFull(s, req[:]); err != nil {
				return
			}
			off := int64(binary.LittleEndian.Uint64(req[:]))
			if _, err := s.Write(data[off : off+peerRandSize]); err != nil {
				return
			}
		}
	})
	var req [8]byte
	buf := make([]byte, peerRandSize)
	b.SetBytes(int64(len(offs)) * peerRandSize)
	b.ResetTimer()
	for range b.N {
		for _, off := range offs {
			binary.LittleEndian.PutUint64(req[:], uint64(off))
			if _, err := c.Write(req[:]); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(c, buf); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	peerMetrics(b, 0, len(offs))
}

// rawPeer connects to a loopback listener whose one connection serve
// handles, with a deadline on both ends.
func rawPeer(b *testing.B, serve func(net.Conn)) net.Conn {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s, err := ln.Accept()
		if err != nil {
			return
		}
		defer s.Close()
		s.SetDeadline(time.Now().Add(15 * time.Minute))
		serve(s)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		ln.Close()
		b.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(15 * time.Minute))
	b.Cleanup(func() {
		c.Close()
		ln.Close()
		<-done
	})
	return c
}
