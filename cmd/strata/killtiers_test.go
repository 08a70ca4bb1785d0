package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"strata/fs"
	"strata/mount/remote"
	"strata/tiers/keyring"
)

const (
	killRounds  = 20
	killFiles   = 6                // file names per writer
	killMaxOps  = 5000             // bound of each worker's operations
	killRecover = 45 * time.Second // bound of a recovery
	killClient  = "c1"
)

// killWorker is one loop of the load.
type killWorker struct {
	name   string
	lastOK atomic.Int64 // start (UnixNano) of the latest operation that succeeded
	// mid is set while an operation is half done: a put that has
	// written some of its data and not begun its close, a call that
	// has been sent and not answered.
	mid atomic.Bool
}

// killLoad is the mixed load and what it saw.
type killLoad struct {
	// phase is even while every tier is up, odd from a kill until the
	// load has recovered (and before the first start is complete).
	phase   atomic.Int64
	round   atomic.Int64
	stop    chan struct{}
	wg      sync.WaitGroup
	workers []*killWorker

	acked, calls, outage atomic.Int64
	upperOK, shaOK       atomic.Int64

	mu     sync.Mutex
	steady []string // failures with every tier up
	wrong  []string // answers that were wrong
}

// op runs fn as one operation of w and sorts its failure: one that began
// and ended within one phase with every tier up is a fault of the
// hierarchy, any other is the outage's.
func (l *killLoad) op(w *killWorker, what string, fn func() error) bool {
	e0 := l.phase.Load()
	start := time.Now()
	err := fn()
	if err == nil {
		w.lastOK.Store(start.UnixNano())
		return true
	}
	if e1 := l.phase.Load(); e0 == e1 && e0%2 == 0 {
		l.mu.Lock()
		l.steady = append(l.steady, fmt.Sprintf("round %d, %s, %s after %v: %v", l.round.Load(), w.name, what, time.Since(start).Round(time.Millisecond), err))
		l.mu.Unlock()
	} else {
		l.outage.Add(1)
	}
	return false
}

func (l *killLoad) stopped() bool {
	select {
	case <-l.stop:
		return true
	default:
		return false
	}
}

func (l *killLoad) pause(d time.Duration) {
	select {
	case <-l.stop:
	case <-time.After(d):
	}
}

// recovered reports whether every worker has succeeded with an operation
// that began at or after since, and else which have not.
func (l *killLoad) recovered(since time.Time) (bool, []string) {
	var behind []string
	for _, w := range l.workers {
		if w.lastOK.Load() < since.UnixNano() {
			behind = append(behind, w.name)
		}
	}
	return len(behind) == 0, behind
}

// killWriter puts records into the files prefix-00 .. prefix-NN of a
// store and keeps, per file, the latest acknowledged version.
type killWriter struct {
	*killWorker
	prefix string
	put    killPut

	mu    sync.Mutex
	acked map[string]int // name -> latest version whose put returned nil
	tried map[string]int // name -> latest version put
	// failed holds the files whose latest put failed: they are left
	// alone until they have been checked, so that what a failure left
	// behind is what the check sees.
	failed map[string]bool
}

// killPut puts data in the file name; it sets mid once some of the data
// is written and clears it before the close.
type killPut func(ctx context.Context, name string, data []byte, mid *atomic.Bool) error

func (l *killLoad) writer(name, prefix string, seed uint64, put killPut) *killWriter {
	w := &killWriter{killWorker: &killWorker{name: name}, prefix: prefix, put: put,
		acked: map[string]int{}, tried: map[string]int{}, failed: map[string]bool{}}
	l.workers = append(l.workers, w.killWorker)
	l.wg.Go(func() {
		r := rand.New(rand.NewPCG(seed, 3))
		version := 0
		for range killMaxOps {
			if l.stopped() {
				return
			}
			w.mu.Lock()
			file := fmt.Sprintf("%s-%02d", prefix, r.IntN(killFiles))
			for i := 0; w.failed[file] && i < 4*killFiles; i++ {
				file = fmt.Sprintf("%s-%02d", prefix, r.IntN(killFiles))
			}
			version++
			w.tried[file] = version
			w.mu.Unlock()
			data := record(file, version, r)
			ok := l.op(w.killWorker, "put "+file, func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				defer cancel()
				defer w.mid.Store(false)
				return w.put(ctx, file, data, &w.mid)
			})
			w.mu.Lock()
			if ok {
				w.acked[file] = max(w.acked[file], version)
				delete(w.failed, file)
				l.acked.Add(1)
			} else {
				w.failed[file] = true
			}
			w.mu.Unlock()
			l.pause(time.Duration(10+r.IntN(30)) * time.Millisecond)
		}
	})
	return w
}

// invoker calls app with random text and checks every answer it gets.
func (l *killLoad) invoker(name, app string, seed uint64, tree *remote.Tree, ok *atomic.Int64) *killWorker {
	w := &killWorker{name: name}
	l.workers = append(l.workers, w)
	l.wg.Go(func() {
		r := rand.New(rand.NewPCG(seed, 5))
		for range killMaxOps {
			if l.stopped() {
				return
			}
			in := make([]byte, 16+r.IntN(200))
			for i := range in {
				in[i] = "abcdefghijklmnopqrstuvwxyz .,\n"[r.IntN(30)]
			}
			var want string
			switch app {
			case "upper":
				want = strings.ToUpper(string(in))
			case "sha256":
				sum := sha256.Sum256(in)
				want = hex.EncodeToString(sum[:]) + "\n"
			}
			if l.op(w, "call "+app, func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				defer cancel()
				w.mid.Store(true)
				defer w.mid.Store(false)
				out, err := killCall(ctx, tree, app, in)
				if err == nil && string(out) != want {
					l.mu.Lock()
					l.wrong = append(l.wrong, fmt.Sprintf("round %d, %s: %s(%q) = %q, want %q", l.round.Load(), name, app, in, out, want))
					l.mu.Unlock()
				}
				return err
			}) {
				l.calls.Add(1)
				ok.Add(1)
			}
			l.pause(time.Duration(10+r.IntN(30)) * time.Millisecond)
		}
	})
	return w
}

// killCall invokes app on one descriptor of its ctl file: the request
// written, the answer read from offset 0 to its end, the close checked.
func killCall(ctx context.Context, tree *remote.Tree, app string, in []byte) ([]byte, error) {
	h, err := tree.File("apps/"+app+"/ctl").Open(ctx, fs.ReadWrite)
	if err != nil {
		return nil, err
	}
	if _, err := h.WriteAt(ctx, in, 0); err != nil {
		h.Close(ctx)
		return nil, err
	}
	out, err := fs.ReadHandle(remote.WithTimeout(ctx, 10*time.Second), h, 64<<20) // the call's budget, not a step's
	if err != nil {
		h.Close(ctx)
		return nil, err
	}
	return out, h.Close(ctx)
}

// killPutTree puts data in /store/name of a 9P tree: create or truncate,
// write in pieces of chunk bytes, a little apart (a program producing its
// output as it goes), close. The close's answer is the acknowledgement.
func killPutTree(tree *remote.Tree, chunk int, gap time.Duration) killPut {
	return func(ctx context.Context, name string, data []byte, mid *atomic.Bool) error {
		_, h, err := tree.Dir("store").Create(ctx, name, fs.WriteOnly|fs.Truncate, 0o644)
		if err != nil {
			return err
		}
		for off := 0; off < len(data); {
			if off > 0 {
				mid.Store(true)
				time.Sleep(gap)
			}
			n, err := h.WriteAt(ctx, data[off:min(off+chunk, len(data))], int64(off))
			if err != nil {
				h.Close(ctx)
				return err
			}
			off += n
		}
		mid.Store(false)
		return h.Close(ctx)
	}
}

// killPutFile puts data in a file through the FUSE mount as a program
// would: open with O_TRUNC, write(2) in pieces, a little apart, close(2),
// whose answer is the acknowledgement.
func killPutFile(dir string, chunk int, gap time.Duration) killPut {
	return func(_ context.Context, name string, data []byte, mid *atomic.Bool) error {
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return err
		}
		for off := 0; off < len(data); off += chunk {
			if off > 0 {
				mid.Store(true)
				time.Sleep(gap)
			}
			if _, err := f.Write(data[off:min(off+chunk, len(data))]); err != nil {
				f.Close()
				return err
			}
		}
		mid.Store(false)
		return f.Close()
	}
}

// killAwait waits, up to d, until one of workers is half way through an
// operation, so that a kill lands in the middle of one.
func killAwait(d time.Duration, workers ...*killWorker) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); {
		for _, w := range workers {
			if w.mid.Load() {
				return true
			}
		}
		time.Sleep(500 * time.Microsecond)
	}
	return false
}

func killTree(t *testing.T, addr string, dial func(ctx context.Context, network, addr string) (net.Conn, error)) *remote.Tree {
	t.Helper()
	tree := remote.New("tcp", addr, remote.Options{Timeout: 3 * time.Second, MinBackoff: 50 * time.Millisecond, MaxBackoff: 250 * time.Millisecond, Dial: dial})
	t.Cleanup(func() { tree.Close() })
	return tree
}

// killProc is one tier process that the test kills and starts again.
type killProc struct {
	name  string
	start func()        // with the same flags, addresses and data every time
	kill  func()        // SIGKILL, and wait until it is gone
	logs  func() string // its log since its latest start
}

// killServe starts `strata serve role`; a restart uses the ports the first
// start got.
func killServe(t *testing.T, bin, role string, args ...string) (*killProc, *tierProc) {
	t.Helper()
	listen, local := "127.0.0.1:0", "127.0.0.1:0"
	var cur *tierProc
	p := &killProc{name: role}
	p.start = func() {
		cur = startTier(t, bin, role, append([]string{"-listen", listen, "-local", local}, args...)...)
		listen, local = cur.addr, cur.local
	}
	p.kill = func() { cur.cmd.Process.Kill(); <-cur.done }
	p.logs = func() string { return cur.logs.String() }
	p.start()
	return p, cur
}

// killVerify reads every file of the writers' store through tree (a tree
// whose /store is that store) and returns how many it checked and what is
// wrong: a file that is not a whole record, one older than its last
// acknowledged version, an acknowledged file that is missing, a name no
// writer made.
func killVerify(ctx context.Context, tree *remote.Tree, writers []*killWriter) (int, []string) {
	acked := map[string]int{}
	owner := map[string]*killWriter{}
	held := map[*killWriter][]string{} // failed files, left alone until now
	for _, w := range writers {
		w.mu.Lock()
		for n, v := range w.acked {
			acked[n] = v
		}
		for n := range w.failed {
			held[w] = append(held[w], n)
		}
		w.mu.Unlock()
		for i := range killFiles {
			owner[fmt.Sprintf("%s-%02d", w.prefix, i)] = w
		}
	}
	var bad []string
	infos, err := tree.Dir("store").ReadDir(ctx)
	if err != nil {
		return 0, []string{fmt.Sprintf("listing the store: %v", err)}
	}
	seen := map[string]bool{}
	for _, fi := range infos {
		seen[fi.Name] = true
		w := owner[fi.Name]
		if w == nil || fi.IsDir() {
			bad = append(bad, fmt.Sprintf("%q (mode %v) in the store is no writer's file", fi.Name, fi.Mode))
			continue
		}
		b, err := fs.ReadAll(ctx, tree.File("store/"+fi.Name), 1<<20)
		if err != nil {
			bad = append(bad, fmt.Sprintf("reading %s: %v", fi.Name, err))
			continue
		}
		a, wasAcked := acked[fi.Name]
		if len(b) == 0 {
			if wasAcked {
				bad = append(bad, fmt.Sprintf("%s is empty, but version %d was acknowledged", fi.Name, a))
			}
			continue // else made by a put that was never acknowledged
		}
		v, err := parseRecord(fi.Name, b)
		if err != nil {
			bad = append(bad, fmt.Sprintf("%s is torn: %v (last acknowledged version %d)", fi.Name, err, a))
			continue
		}
		w.mu.Lock()
		tried := w.tried[fi.Name]
		w.mu.Unlock()
		switch {
		case v < a:
			bad = append(bad, fmt.Sprintf("%s holds version %d, but version %d was acknowledged", fi.Name, v, a))
		case v > tried:
			bad = append(bad, fmt.Sprintf("%s holds version %d, never written (latest %d)", fi.Name, v, tried))
		}
	}
	for n, v := range acked {
		if !seen[n] {
			bad = append(bad, fmt.Sprintf("%s (version %d acknowledged) is missing", n, v))
		}
	}
	for w, names := range held {
		w.mu.Lock()
		for _, n := range names {
			delete(w.failed, n)
		}
		w.mu.Unlock()
	}
	slices.Sort(bad)
	return len(infos), bad
}

// TestKillEachTier runs the hierarchy as separate processes, a cloud, an
// app edge, an edge and a client (`strata mount`, with FUSE and a plain
// local port), under a mixed load that runs the whole time: writers put
// self-checking records into /store through the client's local port, the
// FUSE mount and the edge's plain port, and invokers call upper (an app
// edge hit) and sha256 (a fall-through to the cloud) through the client's
// local port. Twenty rounds, round-robin over the four tiers: SIGKILL one
// in the middle of an operation it is part of (a write cut short for the
// edge and the client, a call for the app edge and the cloud), start it
// again with the same flags, addresses and data, wait until every worker
// of the load has succeeded again, and check every file, read from the
// edge itself (its plain port for the store of the client "local", its
// client port for the client's store): each is a whole record, at the
// last acknowledged version or a later one. A rewrite that its writer's
// tier never closed leaves the old content, as a crash does. Nothing else
// is restarted. Errors while a tier is down are counted; with every tier
// up there must be none, and an answer must always be right.
func TestKillEachTier(t *testing.T) {
	requireFUSE(t)
	began := time.Now()
	bin, mods, dir, keys := hierarchySetup(t, killClient)

	// The hierarchy, one process per tier, with short bounds so that an
	// outage is noticed quickly.
	cloud, cloudP := killServe(t, bin, "cloud", "-data", filepath.Join(dir, "cloud"), "-keys", keys, "-call-timeout", "4s")
	deployApps(t, bin, mods, cloudP.local, "upper", "sha256")
	appedge, appedgeP := killServe(t, bin, "appedge", "-parent", cloudP.addr, "-data", filepath.Join(dir, "appedge"), "-keys", keys,
		"-pin", "upper", "-pull-after", "-1", "-refresh", "1s", "-timeout", "2s", "-call-timeout", "4s")
	edge, edgeP := killServe(t, bin, "edge", "-parent", appedgeP.addr, "-data", filepath.Join(dir, "edge"), "-keys", keys,
		"-timeout", "2s", "-call-timeout", "4s")

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	clientLocal := ln.Addr().String()
	ln.Close()
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(keys, "clients", killClient+".keyset")
	var mountCmd *exec.Cmd
	var mountLogs []*logBuffer // one per start
	var mountDone chan struct{}
	client := &killProc{name: "client"}
	client.start = func() {
		// Nothing is cleaned up before a restart: the mountpoint that a
		// killed daemon leaves is the new daemon's business.
		var logs *logBuffer
		mountCmd, logs, mountDone = startMount(t, bin, edgeP.addr, key, filepath.Join(dir, "client"), mnt,
			"-local", clientLocal, "-timeout", "2s", "-call-timeout", "4s")
		mountLogs = append(mountLogs, logs)
	}
	client.kill = func() { mountCmd.Process.Kill(); <-mountDone }
	client.logs = func() string { return mountLogs[len(mountLogs)-1].String() }
	client.start()
	t.Cleanup(func() {
		if t.Failed() {
			for i, l := range mountLogs {
				t.Logf("log of the client, start %d:\n%s", i+1, l.String())
			}
		}
	})

	ring, err := keyring.Open(keys, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	asClient := ring.Dial(killClient, keyring.Client(killClient))

	// The load.
	load := &killLoad{stop: make(chan struct{})}
	load.phase.Store(1) // not up until every worker has succeeded once
	clientTree := func() *remote.Tree { return killTree(t, clientLocal, nil) }
	var clientWriters, edgeWriters []*killWriter
	clientWriters = append(clientWriters,
		load.writer("writer@client-9p", "cl", 1, killPutTree(clientTree(), 32<<10, 2*time.Millisecond)),
		load.writer("writer@client-fuse", "fuse", 2, killPutFile(filepath.Join(mnt, "store"), 16<<10, 2*time.Millisecond)))
	edgeWriters = append(edgeWriters,
		load.writer("writer@edge-9p", "edge", 3, killPutTree(killTree(t, edgeP.local, nil), 32<<10, 2*time.Millisecond)))
	upper := load.invoker("invoker-upper@client", "upper", 4, clientTree(), &load.upperOK)
	sha := load.invoker("invoker-sha256@client", "sha256", 5, clientTree(), &load.shaOK)
	// What the kills of each tier cut short, in turn: calls for the
	// cloud and the app edge, writes for the edge and the client.
	inFlight := map[string][]*killWorker{
		"cloud":   {sha},
		"appedge": {upper, sha},
		"edge":    {edgeWriters[0].killWorker, clientWriters[0].killWorker, clientWriters[1].killWorker},
		"client":  {clientWriters[0].killWorker, clientWriters[1].killWorker},
	}
	stopLoad := sync.OnceFunc(func() {
		close(load.stop)
		load.wg.Wait()
	})
	defer stopLoad()

	procs := []*killProc{cloud, appedge, edge, client}
	// waitRecovered waits until every worker has succeeded since, and
	// returns how long that took and which workers were the last.
	waitRecovered := func(what string, since time.Time) (time.Duration, []string) {
		t.Helper()
		var last []string
		for deadline := since.Add(killRecover); ; {
			ok, behind := load.recovered(since)
			if ok {
				return time.Since(since), last
			}
			last = behind
			if time.Now().After(deadline) {
				for _, p := range procs {
					t.Logf("log of %s since its latest start:\n%s", p.name, p.logs())
				}
				stopLoad()
				t.Fatalf("%s: the load did not recover within %v: %v have not succeeded since", what, killRecover, behind)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	lost := map[string]bool{} // files torn, missing or older than acknowledged
	verify := func(round int) int {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		files := 0
		for _, v := range []struct {
			tree    *remote.Tree
			writers []*killWriter
			via     string
		}{
			{remote.New("tcp", edgeP.local, remote.Options{Timeout: 5 * time.Second}), edgeWriters, "the edge's plain port"},
			{remote.New("tcp", edgeP.addr, remote.Options{Timeout: 5 * time.Second, Dial: asClient}), clientWriters, "the edge's client port as " + killClient},
		} {
			n, bad := killVerify(ctx, v.tree, v.writers)
			v.tree.Close()
			files += n
			for _, b := range bad {
				if !lost[b] {
					t.Errorf("round %d, through %s: %s", round, v.via, b)
				}
				lost[b] = true
			}
		}
		return files
	}

	start := time.Now()
	waitRecovered("start", start)
	load.phase.Store(2)
	t.Logf("hierarchy up and the load running after %v", time.Since(began).Round(time.Millisecond))

	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 9))
	kills := map[string]int{}
	var worst time.Duration
	midKills := 0
	for round := 1; round <= killRounds; round++ {
		load.round.Store(int64(round))
		p := procs[(round-1)%len(procs)]
		acked0, calls0, outage0 := load.acked.Load(), load.calls.Load(), load.outage.Load()
		load.pause(time.Duration(500+r.IntN(500)) * time.Millisecond)
		// Kill in the middle of an operation the tier is part of.
		victims := inFlight[p.name]
		mid := killAwait(time.Second, victims[kills[p.name]%len(victims)])
		load.phase.Add(1)
		killed := time.Now()
		p.kill()
		kills[p.name]++
		if mid {
			midKills++
		}
		time.Sleep(time.Duration(100+r.IntN(200)) * time.Millisecond) // let the load meet the outage
		p.start()
		restarted := time.Now()
		after, last := waitRecovered(fmt.Sprintf("round %d (%s killed)", round, p.name), restarted)
		took := time.Since(killed)
		worst = max(worst, took)
		load.phase.Add(1)

		verify(round)
		t.Logf("round %2d: killed %-7s (mid-operation %-5v)  recovered %6v after the kill (%6v after the restart, last %v)  %3d puts acknowledged  %3d calls ok  %2d errors during the outage",
			round, p.name, mid, took.Round(time.Millisecond), after.Round(time.Millisecond), last,
			load.acked.Load()-acked0, load.calls.Load()-calls0, load.outage.Load()-outage0)
	}
	stopLoad()
	files := verify(killRounds + 1)

	load.mu.Lock()
	steady, wrong := load.steady, load.wrong
	load.mu.Unlock()
	for i, s := range steady {
		if i == 20 {
			t.Errorf("... and %d more failures with every tier up", len(steady)-i)
			break
		}
		t.Errorf("with every tier up: %s", s)
	}
	for i, s := range wrong {
		if i == 20 {
			t.Errorf("... and %d more wrong answers", len(wrong)-i)
			break
		}
		t.Errorf("wrong answer: %s", s)
	}
	if load.acked.Load() < killRounds || load.upperOK.Load() < killRounds || load.shaOK.Load() < killRounds {
		t.Errorf("the load barely ran: %d puts acknowledged, %d upper and %d sha256 calls", load.acked.Load(), load.upperOK.Load(), load.shaOK.Load())
	}
	t.Logf("summary: %d rounds in %v, kills per tier: cloud %d, appedge %d, edge %d, client %d (%d in the middle of an operation); slowest recovery %v; %d puts acknowledged; %d calls ok (%d upper, %d sha256); %d errors during outages, %d with every tier up; %d wrong answers; %d files checked; data lost: %d",
		killRounds, time.Since(start).Round(time.Second), kills["cloud"], kills["appedge"], kills["edge"], kills["client"], midKills, worst.Round(time.Millisecond),
		load.acked.Load(), load.calls.Load(), load.upperOK.Load(), load.shaOK.Load(), load.outage.Load(), len(steady), len(wrong), files, len(lost))
}
