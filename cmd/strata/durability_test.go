package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"9fans.net/go/plan9"
	plan9client "9fans.net/go/plan9/client"
	"github.com/hugelgupf/p9/p9"
)

// buildStrata builds the strata binary once per test run.
var buildStrata = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "strata-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "strata")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

// strataBin is the strata binary, built once per test run.
func strataBin(t *testing.T) string {
	t.Helper()
	bin, err := buildStrata()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// server is a `strata serve store` process.
type server struct {
	cmd  *exec.Cmd
	addr string
	logs *logBuffer
	eof  chan struct{} // closed when the process's stderr ends
}

// logBuffer collects a process's log lines for test failures.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) WriteString(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.WriteString(s)
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.WriteString(string(p))
	return len(p), nil
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

var listenRE = regexp.MustCompile(`listen=(\S+)`)

func startServer(t *testing.T, data string) *server {
	t.Helper()
	cmd := exec.Command(strataBin(t), "serve", "store", "-listen", "127.0.0.1:0", "-data", data, "-log-level", "debug")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &server{cmd: cmd, logs: new(logBuffer), eof: make(chan struct{})}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			s.logs.WriteString(line + "\n")
			if m := listenRE.FindStringSubmatch(line); m != nil {
				select {
				case addr <- m[1]:
				default:
				}
			}
		}
		close(addr)
		close(s.eof)
	}()
	select {
	case a, ok := <-addr:
		if !ok {
			cmd.Wait()
			t.Fatalf("server exited before listening")
		}
		s.addr = a
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("server did not start listening within 30s")
	}
	return s
}

func (s *server) kill() {
	s.cmd.Process.Signal(syscall.SIGKILL)
	s.cmd.Wait()
}

// A record is one version of a file: a header that names the file, its
// version and the hash of the body, then the body. A torn or mixed file
// fails the hash.
func record(name string, version int, r *rand.Rand) []byte {
	body := make([]byte, r.IntN(192<<10))
	for i := range body {
		body[i] = byte(r.Uint32())
	}
	return recordOf(name, version, body)
}

// recordOf is the record of version of name with body.
func recordOf(name string, version int, body []byte) []byte {
	sum := sha256.Sum256(body)
	return append([]byte(fmt.Sprintf("%s %d %s\n", name, version, hex.EncodeToString(sum[:]))), body...)
}

// parseRecord returns the version of a well-formed record of name.
func parseRecord(name string, b []byte) (int, error) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return 0, errors.New("no header")
	}
	var n string
	var v int
	var h string
	if _, err := fmt.Sscanf(string(b[:i]), "%s %d %s", &n, &v, &h); err != nil || n != name {
		return 0, fmt.Errorf("bad header %q", b[:min(i, 80)])
	}
	sum := sha256.Sum256(b[i+1:])
	if hex.EncodeToString(sum[:]) != h {
		return 0, fmt.Errorf("version %d: body of %d bytes does not match its hash (torn or mixed)", v, len(b)-i-1)
	}
	return v, nil
}

// fileClient is the little a durability writer needs of a 9P client.
type fileClient interface {
	put(name string, data []byte) error // create or truncate, write, close
	get(name string) ([]byte, error)
	list() ([]string, error)
	close()
}

type linuxClient struct {
	c    *p9.Client
	root p9.File
}

// dialLinux dials a 9P2000.L server and attaches to the tree aname names.
func dialLinux(addr, aname string) (fileClient, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	c, err := p9.NewClient(conn, p9.WithMessageSize(1<<20))
	if err != nil {
		conn.Close()
		return nil, err
	}
	root, err := c.Attach(aname)
	if err != nil {
		c.Close()
		return nil, err
	}
	return &linuxClient{c, root}, nil
}

const oTRUNC = 0x200 // O_TRUNC on the 9P2000.L wire

func (l *linuxClient) put(name string, data []byte) error {
	_, dir, err := l.root.Walk(nil)
	if err != nil {
		return err
	}
	f, _, _, err := dir.Create(name, p9.WriteOnly|oTRUNC, 0o644, p9.NoUID, p9.NoGID)
	if err != nil {
		dir.Close()
		return err
	}
	return writeAndClose(f, data)
}

// writeAndClose writes data from offset 0 and closes: the close's answer
// is the acknowledgement.
func writeAndClose(f interface {
	io.WriterAt
	io.Closer
}, data []byte) error {
	for off := 0; off < len(data); {
		n, err := f.WriteAt(data[off:], int64(off))
		if err != nil {
			f.Close()
			return err
		}
		off += n
	}
	return f.Close()
}

func (l *linuxClient) get(name string) ([]byte, error) {
	_, f, err := l.root.Walk([]string{name})
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, _, err := f.Open(p9.ReadOnly); err != nil {
		return nil, err
	}
	var out []byte
	buf := make([]byte, 256<<10)
	for {
		n, err := f.ReadAt(buf, int64(len(out)))
		out = append(out, buf[:n]...)
		if n == 0 || err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
	}
}

func (l *linuxClient) list() ([]string, error) {
	_, d, err := l.root.Walk(nil)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	if _, _, err := d.Open(p9.ReadOnly); err != nil {
		return nil, err
	}
	var names []string
	var off uint64
	for {
		ents, err := d.Readdir(off, 64<<10)
		if err != nil {
			return nil, err
		}
		if len(ents) == 0 {
			return names, nil
		}
		for _, e := range ents {
			if e.Name != "." && e.Name != ".." {
				names = append(names, e.Name)
			}
			off = e.Offset
		}
	}
}

func (l *linuxClient) close() { l.root.Close(); l.c.Close() }

type plan9Client struct {
	fsys *plan9client.Fsys
	conn *plan9client.Conn
}

// dialPlan9 dials a 9P2000 server and attaches to the tree aname names.
func dialPlan9(addr, aname string) (fileClient, error) {
	conn, err := plan9client.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	fsys, err := conn.Attach(nil, "strata", aname)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return &plan9Client{fsys, conn}, nil
}

func (p *plan9Client) put(name string, data []byte) error {
	f, err := p.fsys.Open(name, plan9.OWRITE|plan9.OTRUNC)
	if err != nil {
		f, err = p.fsys.Create(name, plan9.OWRITE|plan9.OTRUNC, 0o644)
		if err != nil {
			return err
		}
	}
	return writeAndClose(f, data)
}

func (p *plan9Client) get(name string) ([]byte, error) {
	f, err := p.fsys.Open(name, plan9.OREAD)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

func (p *plan9Client) list() ([]string, error) {
	f, err := p.fsys.Open("/", plan9.OREAD)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	dirs, err := f.Dirreadall()
	var names []string
	for _, d := range dirs {
		names = append(names, d.Name)
	}
	return names, err
}

func (p *plan9Client) close() { p.conn.Close() }

// ackLog is what a durability writer has been told of its files.
type ackLog struct {
	mu       sync.Mutex
	version  int            // the latest version begun, of any file
	acked    map[string]int // name -> last acknowledged version
	inflight map[string]int // name -> version whose close was not answered
	total    int            // acknowledged writes
}

func newAckLog() *ackLog {
	return &ackLog{acked: map[string]int{}, inflight: map[string]int{}}
}

// begin takes the next version for a write of name, in flight until ack.
func (l *ackLog) begin(name string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.version++
	l.inflight[name] = l.version
	return l.version
}

// ack records that the close of version v of name was answered.
func (l *ackLog) ack(name string, v int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.acked[name] = v
	delete(l.inflight, name)
	l.total++
}

// durabilityName is the file of write i of a round: one of twelve files
// rewritten throughout, or, one time in five, a new one.
func durabilityName(r *rand.Rand, round, i int) string {
	name := fmt.Sprintf("f%02d", r.IntN(12))
	if r.IntN(5) == 0 {
		name = fmt.Sprintf("n%03d-%04d", round, i)
	}
	return name
}

// TestKillDurability kills the store server with SIGKILL while a client
// writes and closes checksummed files, restarts it, and checks that every
// acknowledged file is intact and no file is torn. Twenty rounds, on one
// data directory, alternating the two 9P dialects.
func TestKillDurability(t *testing.T) {
	rounds := 20
	if testing.Short() {
		rounds = 4
	}
	data := t.TempDir()
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	writes := newAckLog()
	for round := range rounds {
		dial, dialect := dialLinux, "9P2000.L"
		if round%2 == 1 {
			dial, dialect = dialPlan9, "9P2000"
		}
		s := startServer(t, data)
		c, err := dial(s.addr, "")
		if err != nil {
			s.kill()
			t.Fatalf("round %d: dial %s: %v\n%s", round, dialect, err, s.logs)
		}
		if round > 0 {
			verify(t, round, c, writes)
		}
		clear(writes.inflight)
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(50+r.IntN(250))*time.Millisecond)
		done := make(chan struct{})
		wr := rand.New(rand.NewPCG(uint64(round), 11))
		go func() {
			defer close(done)
			for i := 0; i < 10_000; i++ {
				name := durabilityName(wr, round, i)
				v := writes.begin(name)
				if err := c.put(name, record(name, v, wr)); err != nil {
					return // the server was killed
				}
				writes.ack(name, v)
			}
		}()
		<-ctx.Done()
		cancel()
		s.kill()
		<-done
		c.close()
	}
	s := startServer(t, data)
	defer s.kill()
	c, err := dialLinux(s.addr, "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	verify(t, rounds, c, writes)
	t.Logf("%d rounds, %d acknowledged writes, %d files checked", rounds, writes.total, len(writes.acked))
	if writes.total < rounds {
		t.Errorf("only %d writes were acknowledged in %d rounds: the test did not exercise the store", writes.total, rounds)
	}
}

// verify checks every file after a restart: each acknowledged file holds its
// acknowledged version or the version whose close was in flight; every file
// is a whole record; no temporary file shows.
func verify(t *testing.T, round int, c fileClient, writes *ackLog) {
	t.Helper()
	acked, inflight := writes.acked, writes.inflight
	names, err := c.list()
	if err != nil {
		t.Fatalf("round %d: list: %v", round, err)
	}
	seen := map[string]bool{}
	for _, name := range names {
		seen[name] = true
		if !strings.HasPrefix(name, "f") && !strings.HasPrefix(name, "n") {
			t.Errorf("round %d: unexpected file %q in the listing", round, name)
			continue
		}
		b, err := c.get(name)
		if err != nil {
			t.Errorf("round %d: read %s: %v", round, name, err)
			continue
		}
		a, wasAcked := acked[name]
		if len(b) == 0 {
			if wasAcked {
				t.Errorf("round %d: %s is empty but version %d was acknowledged", round, name, a)
			}
			continue // created, never acknowledged
		}
		v, err := parseRecord(name, b)
		if err != nil {
			t.Errorf("round %d: %s: %v", round, name, err)
			continue
		}
		if v != a && v != inflight[name] {
			t.Errorf("round %d: %s holds version %d; acknowledged %d, in flight %d", round, name, v, a, inflight[name])
		}
		acked[name] = v // a completed in-flight close is now the state
	}
	for name, v := range acked {
		if !seen[name] {
			t.Errorf("round %d: %s (version %d acknowledged) is missing", round, name, v)
		}
	}
}
