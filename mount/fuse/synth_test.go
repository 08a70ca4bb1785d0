package fuse

import (
	"bytes"
	"context"
	"errors"
	"io"
	iofs "io/fs"
	"net"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"strata/fs"
	"strata/fs/ninep"
	"strata/mount/remote"
)

// synth is a tree of synthetic files, like a tier's: a ctl file whose
// handle implements Flusher, its answer file, and files that fail in the
// ways a tree can (time out, get stuck, panic).
type synth struct {
	mu     sync.Mutex
	answer []byte
	runs   int

	release     chan struct{} // closed at the end: unblocks stuck calls
	slowStarted chan struct{} // a slow, context-minded read began
	interrupted chan error    // and this is how its context ended
}

func newSynth(t *testing.T) (*synth, fs.Dir) {
	s := &synth{release: make(chan struct{}), slowStarted: make(chan struct{}, 8), interrupted: make(chan error, 8)}
	t.Cleanup(func() { close(s.release) })
	timeout := func(context.Context) error {
		return &fs.Error{Op: "read", Path: "timeout", Kind: fs.Timeout, Err: errors.New("the parent did not answer")}
	}
	status := func() []byte { return []byte(strings.Repeat("status line\n", 20000)) }
	root := &synthDir{name: "", kids: map[string]fs.Node{
		"ctl":      &ctlFile{s: s, name: "ctl"},
		"ctlsync":  &ctlFile{s: s, name: "ctlsync", viaSync: true},
		"out":      &textFile{name: "out", stream: true, text: s.lastAnswer},
		"status":   &textFile{name: "status", stream: true, text: status},
		"hello":    &textFile{name: "hello", text: func() []byte { return []byte("hello\n") }},
		"ro":       &textFile{name: "ro", text: func() []byte { return []byte("read only\n") }},
		"timeout":  &badFile{name: "timeout", read: timeout},
		"stuck":    &badFile{name: "stuck", read: func(context.Context) error { <-s.release; return nil }},
		"slow":     &badFile{name: "slow", read: s.slowRead},
		"panic":    &badFile{name: "panic", read: func(context.Context) error { panic("a bug in the tree") }},
		"panicdir": &synthDir{name: "panicdir", lookup: func(string) { panic("a bug in a lookup") }},
		"stuckdir": &synthDir{name: "stuckdir", lookup: func(string) { <-s.release }},
	}}
	return s, root
}

func (s *synth) lastAnswer() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.answer
}

func (s *synth) slowRead(ctx context.Context) error {
	select {
	case s.slowStarted <- struct{}{}:
	default:
	}
	select {
	case <-ctx.Done():
		s.interrupted <- ctx.Err()
		return fs.E("read", "slow", fs.Other, ctx.Err())
	case <-s.release:
		return nil
	}
}

// run runs one request: it answers in upper case, or fails if the request
// starts with "fail". It takes a while, so that a run left to the
// asynchronous RELEASE would show.
func (s *synth) run(req []byte) ([]byte, error) {
	time.Sleep(30 * time.Millisecond)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.runs++
	if bytes.HasPrefix(req, []byte("fail")) {
		s.answer = nil
		return nil, &fs.Error{Op: "run", Path: "ctl", Kind: fs.Invalid, Err: errors.New("the app refused the request")}
	}
	s.answer = bytes.ToUpper(req)
	return s.answer, nil
}

type synthDir struct {
	fs.DirDefaults
	name   string
	kids   map[string]fs.Node
	lookup func(name string)
}

func (d *synthDir) Stat(context.Context) (fs.Info, error) {
	return fs.Info{Name: d.name, Mode: iofs.ModeDir | 0o755}, nil
}

func (d *synthDir) Lookup(_ context.Context, name string) (fs.Node, error) {
	if d.lookup != nil {
		d.lookup(name)
	}
	if k, ok := d.kids[name]; ok {
		return k, nil
	}
	return nil, &fs.Error{Op: "lookup", Path: fs.Join(d.name, name), Kind: fs.NotExist}
}

func (d *synthDir) ReadDir(ctx context.Context) ([]fs.Info, error) {
	var list []fs.Info
	for _, k := range d.kids {
		info, err := k.Stat(ctx)
		if err != nil {
			return nil, err
		}
		list = append(list, info)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Name < list[j].Name })
	return list, nil
}

// textFile is a read-only file with the text that text returns.
type textFile struct {
	fs.FileDefaults
	name   string
	id     uint64
	stream bool
	text   func() []byte
}

func (f *textFile) Stat(context.Context) (fs.Info, error) {
	info := fs.Info{Name: f.name, Mode: 0o444, Stream: f.stream, ID: f.id}
	if !f.stream {
		info.Size = int64(len(f.text()))
	}
	return info, nil
}

func (f *textFile) Open(_ context.Context, flag fs.Flag) (fs.Handle, error) {
	if flag.Writable() {
		return nil, &fs.Error{Op: "open", Path: f.name, Kind: fs.Permission}
	}
	return &textHandle{text: f.text()}, nil
}

type textHandle struct {
	fs.HandleDefaults
	text []byte
}

func (h *textHandle) ReadAt(_ context.Context, p []byte, off int64) (int, error) {
	return readAt(h.text, p, off)
}

func readAt(b, p []byte, off int64) (int, error) {
	if off >= int64(len(b)) {
		return 0, io.EOF
	}
	n := copy(p, b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// badFile is a Stream file whose reads do what read does.
type badFile struct {
	fs.FileDefaults
	name string
	read func(context.Context) error
}

func (f *badFile) Stat(context.Context) (fs.Info, error) {
	return fs.Info{Name: f.name, Mode: 0o444, Stream: true}, nil
}

func (f *badFile) Open(context.Context, fs.Flag) (fs.Handle, error) {
	return &badHandle{f: f}, nil
}

type badHandle struct {
	fs.HandleDefaults
	f *badFile
}

func (h *badHandle) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if err := h.f.read(ctx); err != nil {
		return 0, err
	}
	return 0, io.EOF
}

// ctlFile behaves as a tier's ctl file: writes gather a request, the
// first read after writing runs it and reads the answer from offset 0,
// and a request not read runs at Flush (or, failing that, at Close). With
// viaSync its handle has no Flush and runs the request at Sync instead, as
// a handle reached over 9P does (the mount's flush becomes a Tfsync).
type ctlFile struct {
	fs.FileDefaults
	s       *synth
	name    string
	viaSync bool
}

func (c *ctlFile) Stat(context.Context) (fs.Info, error) {
	return fs.Info{Name: c.name, Mode: 0o666, Stream: true}, nil
}

func (c *ctlFile) Open(_ context.Context, flag fs.Flag) (fs.Handle, error) {
	core := &ctlCore{s: c.s, pending: flag.Writable()}
	if c.viaSync {
		return syncCtlHandle{core}, nil
	}
	return ctlHandle{core}, nil
}

type ctlCore struct {
	fs.HandleDefaults
	s       *synth
	mu      sync.Mutex
	req     []byte
	pending bool
	answer  []byte
	failed  error
}

func (h *ctlCore) WriteAt(_ context.Context, p []byte, off int64) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.pending {
		h.req, h.answer, h.failed, h.pending = h.req[:0], nil, nil, true
	}
	if end := int(off) + len(p); end > len(h.req) {
		h.req = append(h.req, make([]byte, end-len(h.req))...)
	}
	copy(h.req[off:], p)
	return len(p), nil
}

func (h *ctlCore) runLocked() {
	h.pending = false
	h.answer, h.failed = h.s.run(h.req)
}

func (h *ctlCore) ReadAt(_ context.Context, p []byte, off int64) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.pending {
		h.runLocked()
	}
	if h.failed != nil {
		return 0, h.failed
	}
	return readAt(h.answer, p, off)
}

// finish runs a pending request and returns its error.
func (h *ctlCore) finish() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.pending {
		return nil
	}
	h.runLocked()
	return h.failed
}

func (h *ctlCore) Close(context.Context) error { return h.finish() }

type ctlHandle struct{ *ctlCore }

var _ Flusher = ctlHandle{}

func (h ctlHandle) Flush(context.Context) error { return h.finish() }

type syncCtlHandle struct{ *ctlCore }

func (h syncCtlHandle) Sync(context.Context) error { return h.finish() }

func (s *synth) runCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.runs
}

func TestCtlFlush(t *testing.T) {
	s, root := newSynth(t)
	log, _ := testLog(t)
	_, mp := mountT(t, root, Options{Log: log})

	// The request has run, and its answer is there, when echo's close
	// returns: Flush runs it, not the asynchronous Release.
	for i := range 10 {
		want := strings.ToUpper("data" + string(rune('a'+i)) + "\n")
		wantSh(t, mp, `echo data`+string(rune('a'+i))+` > ctl; cat out`, want)
	}
	before := s.runCount()
	wantSh(t, mp, `echo "two words" > ctl && cat out && cat out`, "TWO WORDS\nTWO WORDS\n")
	if got := s.runCount() - before; got != 1 {
		t.Errorf("echo > ctl ran %d requests, want 1 (the shell's flush before writing must not run one)", got)
	}
	// A descriptor closed without a write runs its (empty) request at
	// Release.
	before = s.runCount()
	wantSh(t, mp, `: > ctl`, "")
	for i := 0; i < 200 && s.runCount() == before; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if got := s.runCount() - before; got != 1 {
		t.Errorf("': > ctl' ran %d requests, want 1 (an empty one)", got)
	}

	// A failed run fails close(2) with the errno of its Kind: coreutils
	// report it.
	wantShFail(t, mp, `env echo fail > ctl`, "Invalid argument")
	wantShFail(t, mp, `echo fail | tee ctl`, "Invalid argument")
	wantShFail(t, mp, `printf 'fail now' | cp /dev/stdin ctl`, "Invalid argument")

	// One descriptor, Plan 9 style: write, then read the answer from its
	// start, whatever the write offset was; the next write is a new request.
	wantSh(t, mp, `exec 3<>ctl; echo data >&3; read line <&3; echo "$line"`, "DATA\n")
	wantSh(t, mp, `exec 3<>ctl; echo one >&3; read a <&3; echo second >&3; read b <&3; echo "$a $b"`, "ONE SECOND\n")
	wantSh(t, mp, `exec 3<>ctl; { printf 'in '; printf 'pieces\n'; } >&3; cat <&3`, "IN PIECES\n")
	// Each redirection closes a dup of the descriptor, which ends the
	// request written through it; the next write starts a new one.
	wantSh(t, mp, `exec 3<>ctl; printf 'first\n' >&3; printf 'second\n' >&3; cat <&3`, "SECOND\n")
	// Appending to ctl is the same request from its start.
	wantSh(t, mp, `echo x >> ctl; echo appended >> ctl; cat out`, "APPENDED\n")

	// A failed run through the descriptor fails the read.
	out, errOut, err := sh(t, mp, `exec 3<>ctl; echo fail >&3; cat <&3`)
	if err == nil || !strings.Contains(errOut, "Invalid argument") {
		t.Errorf("reading a failed answer: err %v, stdout %q, stderr %q; want cat to fail with Invalid argument", err, out, errOut)
	}
}

func TestStreamFiles(t *testing.T) {
	_, root := newSynth(t)
	log, _ := testLog(t)
	_, mp := mountT(t, root, Options{Log: log})
	want := strings.Repeat("status line\n", 20000)
	if got := mustSh(t, mp, `cat status`); got != want {
		t.Errorf("cat status: %d bytes, want %d", len(got), len(want))
	}
	wantSh(t, mp, `stat -c %s status; ls -l status | awk '{print $5}'; wc -c < status`, "0\n0\n240000\n")
	wantSh(t, mp, `cat hello; stat -c %s hello`, "hello\n6\n")
	wantSh(t, mp, `ls`, "ctl\nctlsync\nhello\nout\npanic\npanicdir\nro\nslow\nstatus\nstuck\nstuckdir\ntimeout\n")
	wantShFail(t, mp, `echo x > ro`, "Permission denied")
	wantShFail(t, mp, `mkdir newdir`, "Permission denied")
	wantShFail(t, mp, `ls nothing`, "No such file or directory")
}

func TestErrors(t *testing.T) {
	_, root := newSynth(t)
	log, lb := testLog(t)
	_, mp := mountT(t, root, Options{Log: log})

	// A Timeout from the tree is ETIMEDOUT, and the log says why.
	wantShFail(t, mp, `cat timeout`, "Connection timed out")
	if l := lb.String(); !strings.Contains(l, "path=/timeout") || !strings.Contains(l, "the parent did not answer") || !strings.Contains(l, "level=WARN") {
		t.Errorf("the log does not give the path and reason of the timeout:\n%s", l)
	}

	// A panic in the tree is EIO, logged with its stack, and the mount
	// goes on.
	wantShFail(t, mp, `cat panic`, "Input/output error")
	wantShFail(t, mp, `ls panicdir/x`, "Input/output error")
	wantSh(t, mp, `cat hello`, "hello\n")
	if l := lb.String(); !strings.Contains(l, "a bug in the tree") || !strings.Contains(l, "panicdir") || !strings.Contains(l, "goroutine") {
		t.Errorf("the log does not show the panics with a stack:\n%s", l)
	}
}

func TestTimeout(t *testing.T) {
	s, root := newSynth(t)
	log, lb := testLog(t)
	m, mp := mountT(t, root, Options{Log: log, Timeout: 300 * time.Millisecond})

	// A stuck read and a stuck lookup are cut at the bound.
	for _, script := range []string{`cat stuck`, `ls stuckdir/x`} {
		start := time.Now()
		wantShFail(t, mp, script, "Connection timed out")
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("%s took %v with a 300ms bound", script, d)
		}
	}
	if m.running.Load() == 0 {
		t.Error("no call is counted as left running")
	}
	if !strings.Contains(lb.String(), "did not answer in time") {
		t.Errorf("the log does not say that a call was left running:\n%s", lb.String())
	}
	// A context-minded slow read ends with the deadline, as ETIMEDOUT.
	wantShFail(t, mp, `cat slow`, "Connection timed out")
	select {
	case err := <-s.interrupted:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("the slow read saw %v, want the deadline", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("the slow read's context did not end")
	}
	// The mount still works.
	wantSh(t, mp, `cat hello && echo data > ctl && cat out`, "hello\nDATA\n")
}

func TestInterrupt(t *testing.T) {
	s, root := newSynth(t)
	log, _ := testLog(t)
	_, mp := mountT(t, root, Options{Log: log, Timeout: time.Minute})

	cmd := exec.Command("cat", filepath.Join(mp, "slow"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.slowStarted:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatal("cat did not start reading within 10s")
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.interrupted:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("the interrupted read saw %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("a signal to the reader did not cancel the tree's context")
		cmd.Process.Kill()
	}
	cmd.Wait()
	wantSh(t, mp, `cat hello`, "hello\n")
}

// TestCtlOverNinep mounts the synthetic tree as a client tier sees its
// edge: served over 9P2000.L and dialed with mount/remote. The mount's
// flush reaches the ctl handle as a Sync (Tfsync), so a handle that runs
// its request at Sync gets the same ordering and errors as a Flusher.
func TestCtlOverNinep(t *testing.T) {
	s, root := newSynth(t)
	srv := ninep.NewServer(root, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background(), ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	tr, err := remote.Dial(context.Background(), "tcp", ln.Addr().String(), remote.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	log, _ := testLog(t)
	_, mp := mountT(t, tr.Root(), Options{Log: log})

	for i := range 5 {
		before := s.runCount()
		word := "over9p" + string(rune('a'+i))
		wantSh(t, mp, `echo `+word+` > ctlsync; cat out`, strings.ToUpper(word)+"\n")
		if got := s.runCount() - before; got != 1 {
			t.Errorf("echo > ctlsync ran %d requests, want 1", got)
		}
	}
	wantShFail(t, mp, `env echo fail > ctlsync`, "Invalid argument")
	wantSh(t, mp, `exec 3<>ctlsync; echo data >&3; read line <&3; echo "$line"`, "DATA\n")
	wantSh(t, mp, `cat status | wc -c; cat hello`, "240000\nhello\n")
	wantShFail(t, mp, `cat timeout`, "Connection timed out")
}

// TestReusedIDs: two files that the tree gives one ID (as the store does
// when a rewrite frees an inode number that a new file then takes) are two
// files to the kernel, so mv and cp do not take them for one.
func TestReusedIDs(t *testing.T) {
	hello := func() []byte { return []byte("hello\n") }
	root := &synthDir{name: "", kids: map[string]fs.Node{
		"a": &textFile{name: "a", id: 42, text: hello},
		"b": &textFile{name: "b", id: 42, text: hello},
	}}
	log, _ := testLog(t)
	_, mp := mountT(t, root, Options{Log: log})
	out := mustSh(t, mp, `stat -c %i a b; ls -i a b | awk '{print $1}'`)
	f := strings.Fields(out)
	if len(f) != 4 {
		t.Fatalf("stat and ls -i printed %q", out)
	}
	if f[0] == f[1] {
		t.Errorf("a and b show one inode number, %s", f[0])
	}
	if f[0] != f[2] || f[1] != f[3] {
		t.Errorf("stat says %s %s, ls -i says %s %s", f[0], f[1], f[2], f[3])
	}
	// cp refuses to copy a file onto itself: here it must try, and fail
	// only because the tree is read-only.
	_, errOut, err := sh(t, mp, `cp a b`)
	if err == nil || strings.Contains(errOut, "same file") {
		t.Errorf("cp a b: %v, stderr %q; want a refusal that is not \"same file\"", err, errOut)
	}
}
