package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"strata/fs"
	"strata/mount/remote"
	"strata/mount/shape"
	"strata/tiers/call"
)

// The deadlines of TestLinkFaults. Every tier and the client run with
// -timeout faultStep (the bound of one remote step on the link to the
// parent, and of a dial) and -call-timeout faultBudget; the test's calls
// ask for faultBudget too. What the test holds them to:
const (
	faultStep   = 2 * time.Second // -timeout at the client, the edge and the app edge
	faultBudget = 6 * time.Second // -call-timeout at every tier, and each call's budget
	// faultGrace is the margin over a deadline for starting processes and
	// scheduling on a busy machine.
	faultGrace = 2 * time.Second
	// faultCallBound: an invocation answers, or fails with a reply that
	// names the link, within this.
	faultCallBound = faultBudget + faultGrace
	// faultStoreBound: a store write and read back through the client,
	// and each `ls` on the mount, return within this.
	faultStoreBound = 2*faultStep + faultGrace
	faultLsBound    = 2*faultStep + faultGrace
	// faultSlowBound: under latency and bandwidth the store round trip and
	// each `ls` must succeed, within this: a store round trip through the
	// client is about 20 round trips on the client link (each operation
	// walks from the root), 12 s at 600 ms; 24 KiB take 3 s each way at
	// 8 KB/s.
	faultSlowBound = 20 * time.Second
	// faultRecoverBound: once a fault is cleared, everything works again
	// within this, without restarting anything: the longest redial backoff
	// (5 s, jittered up to 6 s) plus a dial and a call.
	faultRecoverBound = 6*time.Second + faultStep + faultCallBound
	// faultHang is when a child `ls` is killed as hung.
	faultHang = 20 * time.Second
)

// The faults.
const (
	faultLatency = 300 * time.Millisecond // one way, each direction (600 ms more per round trip)
	faultRate    = 8 << 10                // bytes per second, each direction
	faultHold    = 250 * time.Millisecond // one way, while an answer is cut on its way back
	faultBig     = 256 << 10              // a request (and upper's answer) cut in the middle
	faultFile    = 24 << 10               // a store file written and read back on a slow link
)

// faultHier is the hierarchy under test: every tier its own process, a
// delay line in front of every parent.
type faultHier struct {
	cloud, appedge, edge *tierProc
	mnt                  string // the client's FUSE mount
	local                string // the client's plain 9P port
	mlogs                *logBuffer
	links                []*faultLink
}

// faultLink is one link between two tiers, through its delay line.
type faultLink struct {
	name   string // "client-edge"
	proxy  *shape.Proxy
	parent *tierProc // the process behind the link
	// label is how the tier below names the link in its errors:
	// "edge (127.0.0.1:PORT)".
	label string
	// app is an app whose invocation crosses the link; runner is the
	// tier that runs it.
	app    string
	runner *tierProc
	// childLog is the log of the tier below the link, which says when it
	// closes its connection to the parent.
	childLog *logBuffer
}

// faultRow is one line of the summary.
type faultRow struct {
	pair, fault           string
	call, store, ls       string
	recovered             string
	appliedTwice, checked int
	redialed              string // healthy links closed or dialed again during the fault
}

// TestLinkFaults breaks each link of a whole hierarchy of processes
// (client `strata mount` -> edge -> app edge -> cloud, a shape delay line
// in front of every parent) in five ways: a latency of 300 ms each way, a
// bandwidth of 8 KB/s each way, connection resets in the middle of a write
// (a request cut half way, and an answer cut on its way back after the
// app ran), a blackhole (bytes vanish, connections stay open), and the
// parent process behind the link stopped with SIGSTOP.
//
// Deadlines: every tier runs with -timeout 2s (one remote step) and
// -call-timeout 6s; calls ask for 6 s. Under each fault:
//   - an invocation that crosses the link (upper for the client link and
//     link A, sha256 for link B) succeeds, or fails with a reply that names
//     the link ("edge (ADDR)", "appedge/g1 (ADDR)", "cloud (ADDR)"), within
//     6 s + 2 s; under latency and bandwidth it must succeed;
//   - a store write and read back through the client (client link) returns
//     within 2 x 2 s + 2 s; under latency and bandwidth a 24 KiB file must
//     make it within 20 s; a store file rewritten while the link resets is
//     afterwards either the old version or the new one, whole;
//   - `ls` of the mount's /apps and /store (the listing of /apps crosses
//     every link) returns within 2 x 2 s + 2 s, and under latency and
//     bandwidth succeeds within 20 s listing both apps; one that runs 20 s
//     is killed and the test fails;
//   - the healthy links below the faulty one stay connected (the tier
//     below each neither closes its connection to its parent nor dials it
//     again), and so does the faulty link itself under latency: a slow or
//     stopped tier costs its callers their answer, not their links.
//
// Once the fault is cleared (the delay line back to normal, SIGCONT), upper
// and sha256, the store and both listings work again within 16 s (the
// longest redial backoff, a dial and a call), with no process restarted.
// Every call names its request ID and retries with it; each tier's /trace
// shows how often the app ran for an ID: it must complete at most once per
// ID, and a retry after an answer was lost gets the recorded answer.
func TestLinkFaults(t *testing.T) {
	requireFUSE(t)
	start := time.Now()
	h := faultStart(t)
	t.Logf("hierarchy up in %v", time.Since(start).Round(time.Millisecond))
	faults := []struct {
		name string
		run  func(*testing.T, *faultHier, *faultLink, *faultRow)
	}{
		{"latency", faultRunLatency},
		{"bandwidth", faultRunBandwidth},
		{"reset", faultRunReset},
		{"blackhole", faultRunBlackhole},
		{"sigstop", faultRunStop},
	}
	var rows []*faultRow
	for _, l := range h.links {
		for _, f := range faults {
			row := &faultRow{pair: l.name, fault: f.name}
			rows = append(rows, row)
			t.Run(l.name+"/"+f.name, func(t *testing.T) {
				if err := h.waitWorks(faultRecoverBound + 30*time.Second); err != nil {
					t.Fatalf("the hierarchy does not work before the fault: %v", err)
				}
				logStart := len(h.mlogs.String())
				defer func() {
					l.proxy.Clear()
					l.parent.cmd.Process.Signal(syscall.SIGCONT)
					if t.Failed() {
						t.Logf("client mount log during the subtest:\n%s", h.mlogs.String()[logStart:])
					}
				}()
				f.run(t, h, l, row)
			})
		}
	}
	var b strings.Builder
	b.WriteString("\n| pair | fault | invocation across the link | store write+read | ls /apps, /store | healthy links closed | recovered in | applied twice |\n|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %d of %d IDs |\n", r.pair, r.fault, r.call, r.store, r.ls, r.redialed, r.recovered, r.appliedTwice, r.checked)
	}
	t.Log(b.String())
	t.Logf("whole test: %v", time.Since(start).Round(time.Second))
}

var faultMountedRE = regexp.MustCompile(`msg=mounted .*local=(\S+)`)

// faultStart starts the hierarchy: keys, the cloud with upper and sha256,
// the app edge pinning upper, the edge and the client mount, each child
// pointed at a delay line in front of its parent.
func faultStart(t *testing.T) *faultHier {
	t.Helper()
	bin, mods, dir, keys := hierarchySetup(t, "c1")
	step, budget := faultStep.String(), faultBudget.String()
	h := &faultHier{}
	h.cloud = startTier(t, bin, "cloud", "-listen", "127.0.0.1:0", "-local", "127.0.0.1:0",
		"-data", filepath.Join(dir, "cloud"), "-keys", keys, "-call-timeout", budget)
	deployApps(t, bin, mods, h.cloud.local, "upper", "sha256")
	proxy := func(target string) *shape.Proxy {
		p, err := shape.Start(context.Background(), shape.Config{Listen: "127.0.0.1:0", Target: target, DialTimeout: faultStep})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		return p
	}
	linkB := proxy(h.cloud.addr)
	h.appedge = startTier(t, bin, "appedge", "-listen", "127.0.0.1:0", "-local", "127.0.0.1:0", "-parent", linkB.Addr(),
		"-data", filepath.Join(dir, "appedge"), "-keys", keys, "-pin", "upper", "-pull-after", "-1",
		"-timeout", step, "-call-timeout", budget)
	linkA := proxy(h.appedge.addr)
	h.edge = startTier(t, bin, "edge", "-listen", "127.0.0.1:0", "-local", "127.0.0.1:0", "-parent", linkA.Addr(),
		"-data", filepath.Join(dir, "edge"), "-keys", keys, "-timeout", step, "-call-timeout", budget)
	linkC := proxy(h.edge.addr)
	h.mnt = filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(h.mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	// Threshold 1 out of reach: the client never holds a copy, so every
	// call crosses its link.
	_, h.mlogs, _ = startMount(t, bin, linkC.Addr(), filepath.Join(keys, "clients", "c1.keyset"), filepath.Join(dir, "client"), h.mnt,
		"-timeout", step, "-call-timeout", budget, "-threshold1", "1000000000")
	for deadline := time.Now().Add(10 * time.Second); h.local == ""; time.Sleep(20 * time.Millisecond) {
		if m := faultMountedRE.FindStringSubmatch(h.mlogs.String()); m != nil {
			h.local = m[1]
		} else if time.Now().After(deadline) {
			t.Fatalf("the mount does not say its local port:\n%s", h.mlogs.String())
		}
	}
	h.links = []*faultLink{
		{name: "client-edge", proxy: linkC, parent: h.edge, label: "edge (" + linkC.Addr() + ")", app: "upper", runner: h.appedge, childLog: h.mlogs},
		{name: "edge-appedge", proxy: linkA, parent: h.appedge, label: "appedge/g1 (" + linkA.Addr() + ")", app: "upper", runner: h.appedge, childLog: h.edge.logs},
		{name: "appedge-cloud", proxy: linkB, parent: h.cloud, label: "cloud (" + linkB.Addr() + ")", app: "sha256", runner: h.cloud, childLog: h.appedge.logs},
	}
	// The pinned replica and the compiled modules take a while at first.
	if err := h.waitWorks(3 * time.Minute); err != nil {
		t.Fatalf("the hierarchy never worked: %v", err)
	}
	return h
}

// faultWant is app's answer to input.
func faultWant(app string, input []byte) string {
	if app == "sha256" {
		sum := sha256.Sum256(input)
		return hex.EncodeToString(sum[:]) + "\n"
	}
	return strings.ToUpper(string(input))
}

// faultInput is a request of n bytes in lower case.
func faultInput(n int, tag string) []byte {
	b := bytes.Repeat([]byte(tag+" abcdefghijklmnopqrstuvwxyz\n"), n/(len(tag)+28)+1)
	return b[:n]
}

// faultCallResult is how one invocation ended.
type faultCallResult struct {
	reply *call.Reply // nil if no reply came back
	err   error       // no reply: why
	took  time.Duration
}

// ok reports whether the call succeeded with the right answer.
func (r faultCallResult) ok(app string, input []byte) bool {
	return r.err == nil && r.reply.OK && string(r.reply.Out) == faultWant(app, input)
}

func (r faultCallResult) String() string {
	switch {
	case r.err != nil:
		return fmt.Sprintf("no reply after %v: %v", r.took.Round(time.Millisecond), r.err)
	case r.reply.OK:
		return fmt.Sprintf("ok in %v at %s", r.took.Round(time.Millisecond), r.reply.Where)
	}
	return fmt.Sprintf("failed in %v at %s: %s", r.took.Round(time.Millisecond), r.reply.Where, r.reply.Reason)
}

// cell is the result for the summary: the outcome, the time, and for a
// failure the tier and link it names and the cause, without the request
// ID.
func (r faultCallResult) cell(l *faultLink) string {
	took := r.took.Round(100 * time.Millisecond)
	switch {
	case r.err != nil:
		return fmt.Sprintf("no reply, %v", took)
	case r.reply.OK:
		return fmt.Sprintf("ok %v", took)
	}
	why := r.reply.Reason
	if i := strings.LastIndex(why, r.reply.ID+": "); i >= 0 {
		why = why[i+len(r.reply.ID)+2:]
	}
	if len(why) > 60 {
		why = why[:60] + "..."
	}
	name, _, _ := strings.Cut(l.label, " ")
	if strings.Contains(r.reply.Reason, l.label) {
		name = "names " + name
	} else {
		name = "does not name " + name
	}
	return fmt.Sprintf("error %v (%s: %s)", took, name, why)
}

// invoke runs app once through the client's plain port with request ID id
// and a budget of faultBudget, the way a tier forwards: the call file
// /apps/APP/calls/ID. It waits up to faultCallBound for the reply.
func (h *faultHier) invoke(app, id string, input []byte) faultCallResult {
	start := time.Now()
	reply, err := faultInvoke(h.local, app, id, input)
	return faultCallResult{reply: reply, err: err, took: time.Since(start)}
}

func faultInvoke(addr, app, id string, input []byte) (*call.Reply, error) {
	ctx, cancel := context.WithTimeout(context.Background(), faultCallBound)
	defer cancel()
	// The client's port is on loopback, outside the faults: its steps
	// may take the whole bound.
	tree, err := remote.Dial(ctx, "tcp", addr, remote.Options{Name: "client", Timeout: faultCallBound})
	if err != nil {
		return nil, err
	}
	defer tree.Close()
	hd, err := tree.File("apps/"+app+"/calls/"+id).Open(ctx, fs.ReadWrite)
	if err != nil {
		return nil, err
	}
	defer hd.Close(context.WithoutCancel(ctx))
	if _, err := hd.WriteAt(ctx, call.EncodeRequest(&call.Request{ID: id, App: app, Input: input, Budget: faultBudget}), 0); err != nil {
		return nil, err
	}
	var got []byte
	buf := make([]byte, 64<<10)
	for {
		n, err := hd.ReadAt(ctx, buf, int64(len(got)))
		got = append(got, buf[:n]...)
		if total := call.ReplyLen(got); total >= 0 && len(got) >= total {
			break
		}
		if errors.Is(err, io.EOF) || (err == nil && n == 0) {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	return call.DecodeReply(id, got)
}

// checkCall holds a call made under a fault to the stated deadline: it
// came back within faultCallBound, and a failure is a reply that names the
// link.
func (l *faultLink) checkCall(t *testing.T, what string, r faultCallResult) {
	t.Helper()
	if r.took > faultCallBound {
		t.Errorf("%s: took %v, past the bound of %v: %v", what, r.took, faultCallBound, r)
	}
	switch {
	case r.err != nil:
		t.Errorf("%s: no reply from the client within %v: %v", what, faultCallBound, r.err)
	case !r.reply.OK && !strings.Contains(r.reply.Reason, l.label):
		t.Errorf("%s: the failure does not name the link %q: %s", what, l.label, r.reply.Reason)
	}
}

// store writes name with data in the client's store and reads it back,
// through the client's plain port, within bound.
func (h *faultHier) store(name string, data []byte, bound time.Duration) (time.Duration, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	tree, err := remote.Dial(ctx, "tcp", h.local, remote.Options{Name: "client", Timeout: bound})
	if err != nil {
		return time.Since(start), err
	}
	defer tree.Close()
	_, hd, err := tree.Dir("store").Create(ctx, name, fs.WriteOnly|fs.Truncate, 0o644)
	if err != nil {
		return time.Since(start), fmt.Errorf("create: %w", err)
	}
	if _, err := hd.WriteAt(ctx, data, 0); err != nil {
		hd.Close(ctx)
		return time.Since(start), fmt.Errorf("write: %w", err)
	}
	if err := hd.Close(ctx); err != nil {
		return time.Since(start), fmt.Errorf("close: %w", err)
	}
	got, err := fs.ReadAll(ctx, tree.File("store/"+name), 64<<20)
	if err != nil {
		return time.Since(start), fmt.Errorf("read back: %w", err)
	}
	if !bytes.Equal(got, data) {
		return time.Since(start), fmt.Errorf("read back %d bytes, not the %d written", len(got), len(data))
	}
	return time.Since(start), nil
}

// readStore reads name from the client's store.
func (h *faultHier) readStore(name string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), faultStoreBound)
	defer cancel()
	tree, err := remote.Dial(ctx, "tcp", h.local, remote.Options{Name: "client", Timeout: faultStoreBound})
	if err != nil {
		return nil, err
	}
	defer tree.Close()
	return fs.ReadAll(ctx, tree.File("store/"+name), 64<<20)
}

// ls lists dir of the mount in a child process, killed at faultHang.
func (h *faultHier) ls(dir string) (string, time.Duration, error) {
	start := time.Now()
	cmd := exec.Command("timeout", "-k", "5", fmt.Sprint(int(faultHang.Seconds())), "ls", filepath.Join(h.mnt, dir))
	var b bytes.Buffer
	cmd.Stdout, cmd.Stderr = &b, &b
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) && (ee.ExitCode() == 124 || ee.ExitCode() == 137) {
		err = fmt.Errorf("ls %s hung: killed after %v", dir, faultHang)
	} else if err != nil {
		err = fmt.Errorf("ls %s: %v: %s", dir, err, strings.TrimSpace(b.String()))
	}
	return b.String(), time.Since(start), err
}

// lsBoth lists /apps and /store under a fault. slow (latency, bandwidth)
// says they must succeed, and list both apps, within faultSlowBound;
// otherwise each must return within faultLsBound, successfully or not. It
// returns the summary cell.
func (h *faultHier) lsBoth(t *testing.T, slow bool) string {
	t.Helper()
	bound := faultLsBound
	if slow {
		bound = faultSlowBound
	}
	var cells []string
	for _, d := range []string{"apps", "store"} {
		out, took, err := h.ls(d)
		cell := fmt.Sprintf("ok %v", took.Round(100*time.Millisecond))
		if err != nil {
			cell = fmt.Sprintf("error %v", took.Round(100*time.Millisecond))
			t.Logf("ls /%s under the fault: %v", d, err)
		}
		apps := 0
		if d == "apps" && err == nil {
			for _, app := range []string{"upper", "sha256"} {
				if strings.Contains(out, app) {
					apps++
				}
			}
			cell += fmt.Sprintf(" (%d of 2 apps)", apps)
		}
		cells = append(cells, cell)
		switch {
		case err != nil && strings.Contains(err.Error(), "hung"):
			t.Errorf("%v", err)
		case took > bound:
			t.Errorf("ls /%s took %v, past the bound of %v: %v", d, took, bound, err)
		case slow && err != nil:
			t.Errorf("ls /%s on a slow link: %v", d, err)
		case slow && d == "apps" && apps != 2:
			t.Errorf("ls /apps on a slow link lists %q, not both apps", out)
		}
	}
	return strings.Join(cells, ", ")
}

// faultSnap is the state of every link before a fault: how many
// connections its delay line accepted, and how long the log of the tier
// below it was.
type faultSnap struct {
	accepted []int64
	logLen   []int
}

func (h *faultHier) snap() faultSnap {
	var s faultSnap
	for _, l := range h.links {
		s.accepted = append(s.accepted, l.proxy.Stats().Accepted)
		s.logLen = append(s.logLen, len(l.childLog.String()))
	}
	return s
}

// faultClosedRE is the log line of a tier that closes its connection to
// its parent, and why.
var faultClosedRE = regexp.MustCompile(`msg="9P2000.L connection closed" .*why=(".*"|\S+)`)

// checkHealthy fails the test if, since before, a tier below l (nearer
// the client) closed its connection to its parent or dialed it again,
// while only l was at fault; with self, the tier just below l too (its
// link was slow but working).
func (h *faultHier) checkHealthy(t *testing.T, l *faultLink, row *faultRow, before faultSnap, self bool) {
	t.Helper()
	var bad, why []string
	for i, m := range h.links {
		if m == l && !self {
			break
		}
		closed := faultClosedRE.FindAllStringSubmatch(m.childLog.String()[before.logLen[i]:], -1)
		redials := m.proxy.Stats().Accepted - before.accepted[i]
		if len(closed) > 0 || redials > 0 {
			bad = append(bad, fmt.Sprintf("%s closed %d, redialed %d", m.name, len(closed), redials))
			for _, c := range closed {
				why = append(why, m.name+": "+c[1])
			}
		}
		if m == l {
			break
		}
	}
	row.redialed = "none"
	if len(bad) > 0 {
		row.redialed = strings.Join(bad, "; ")
		what := "the healthy links below the fault"
		if self {
			what = "links that were slow but working"
		}
		t.Errorf("%s were declared stuck and closed during the fault: %s; why:\n%s", what, row.redialed, strings.Join(why, "\n"))
	}
}

// storeCell runs a store write and read back of size bytes under a fault
// on the client link, within bound; slow says it must succeed.
func (h *faultHier) storeCell(t *testing.T, name string, size int, slow bool) string {
	t.Helper()
	bound := faultStoreBound
	if slow {
		bound = faultSlowBound
	}
	took, err := h.store(name, faultInput(size, name), bound)
	cell := fmt.Sprintf("ok %v", took.Round(100*time.Millisecond))
	if err != nil {
		cell = fmt.Sprintf("error %v", took.Round(100*time.Millisecond))
		t.Logf("store round trip of %d bytes under the fault: %v after %v", size, err, took)
	}
	if took > bound {
		t.Errorf("store round trip of %d bytes took %v, past the bound of %v: %v", size, took, bound, err)
	} else if slow && err != nil {
		t.Errorf("store round trip of %d bytes on a slow link: %v", size, err)
	}
	return cell
}

// works checks, once, that everything works: upper and sha256 through the
// client (so across every link), a store write and read back, and both
// listings. ids collects the request IDs used.
func (h *faultHier) works(ids *[]string) error {
	for _, app := range []string{"upper", "sha256"} {
		id := call.NewID(call.KindApp, app)
		if ids != nil {
			*ids = append(*ids, id)
		}
		in := []byte("works " + id)
		if r := h.invoke(app, id, in); !r.ok(app, in) {
			return fmt.Errorf("%s: %v", app, r)
		}
	}
	if _, err := h.store("works", []byte("works "+time.Now().String()), faultStoreBound); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	for _, d := range []string{"apps", "store"} {
		out, _, err := h.ls(d)
		if err != nil {
			return err
		}
		if d == "apps" && !(strings.Contains(out, "upper") && strings.Contains(out, "sha256")) {
			return fmt.Errorf("ls /apps lists %q, not both apps", out)
		}
	}
	return nil
}

// waitWorks waits until works succeeds, up to bound.
func (h *faultHier) waitWorks(bound time.Duration) error {
	deadline := time.Now().Add(bound)
	for {
		err := h.works(nil)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitRecovered waits, after a fault is cleared, until everything works again,
// and fails the test past faultRecoverBound. It returns the time taken.
func (h *faultHier) waitRecovered(t *testing.T, row *faultRow, ids *[]string) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(faultRecoverBound)
	for {
		err := h.works(ids)
		if err == nil {
			took := time.Since(start)
			row.recovered = took.Round(100 * time.Millisecond).String()
			return took
		}
		if time.Now().After(deadline) {
			row.recovered = "no"
			t.Fatalf("nothing restarted, and %v after the fault was cleared it still fails: %v", faultRecoverBound, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// retry calls app with id again until it succeeds, within
// faultRecoverBound: the answer must be the right one.
func (h *faultHier) retry(t *testing.T, app, id string, input []byte) faultCallResult {
	t.Helper()
	deadline := time.Now().Add(faultRecoverBound)
	for {
		r := h.invoke(app, id, input)
		if r.ok(app, input) {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("a retry of %s with the same ID does not succeed: %v", id, r)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// faultRuns is what the tiers' traces say about one request ID.
type faultRuns struct {
	completed int      // arrivals where the app ran here and succeeded
	started   int      // arrivals where the app was started here
	replayed  int      // arrivals answered from a tier's recorder
	tiers     []string // where it completed
}

// faultParseTrace reads a /trace/ID text: one block per arrival at a tier.
func faultParseTrace(text string) faultRuns {
	var r faultRuns
	var tierName, decision string
	flush := func() {
		if strings.HasPrefix(decision, "ran here") {
			r.started++
		}
		decision = ""
	}
	for _, line := range strings.Split(text, "\n") {
		k, v, _ := strings.Cut(line, " ")
		switch k {
		case "#":
			flush()
			tierName = v
		case "decision":
			decision = v
			if v == "replayed from the recorder" {
				r.replayed++
			}
		case "outcome":
			if strings.HasPrefix(decision, "ran here") && v == "ok" {
				r.completed++
				r.tiers = append(r.tiers, tierName)
			}
		}
	}
	flush()
	return r
}

// runs reads /trace/ID through the client (every tier it reached).
func (h *faultHier) runs(id string) (faultRuns, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tree, err := remote.Dial(ctx, "tcp", h.local, remote.Options{Name: "client", Timeout: 8 * time.Second})
	if err != nil {
		return faultRuns{}, "", err
	}
	defer tree.Close()
	text, err := faultQuery(ctx, tree, "trace/"+id, 0, 6*time.Second)
	if err != nil {
		return faultRuns{}, "", err
	}
	return faultParseTrace(string(text)), string(text), nil
}

// faultQuery reads a query file, telling the tier how many tiers asked
// before it (MaxQueryHops-1 keeps the tier from asking its parent) and
// the budget.
func faultQuery(ctx context.Context, tree *remote.Tree, p string, hops int, budget time.Duration) ([]byte, error) {
	hd, err := tree.File(p).Open(ctx, fs.ReadWrite)
	if err != nil {
		return nil, err
	}
	defer hd.Close(context.WithoutCancel(ctx))
	if _, err := hd.WriteAt(ctx, fmt.Appendf(nil, "budget-ms %d\nhops %d\n", budget.Milliseconds(), hops), 0); err != nil {
		return nil, err
	}
	return fs.ReadHandle(ctx, hd, 64<<20)
}

// checkRuns reads the traces of ids and fails the test if an app ran to
// completion more than once for one ID. It fills the row's count.
func (h *faultHier) checkRuns(t *testing.T, row *faultRow, ids []string) {
	t.Helper()
	for _, id := range ids {
		r, text, err := h.runs(id)
		if err != nil {
			t.Errorf("trace of %s: %v", id, err)
			continue
		}
		row.checked++
		if r.completed > 1 {
			row.appliedTwice++
			t.Errorf("request %s ran %d times (at %v):\n%s", id, r.completed, r.tiers, text)
		}
	}
}

// exactlyOnce fails the test unless the app completed exactly once for
// id; with replayed, a tier must also have answered a retry of id from its
// recorder.
func (h *faultHier) exactlyOnce(t *testing.T, id string, replayed bool) {
	t.Helper()
	r, text, err := h.runs(id)
	if err != nil {
		t.Errorf("trace of %s: %v", id, err)
		return
	}
	if r.completed != 1 {
		t.Errorf("request %s ran to completion %d times, want exactly 1:\n%s", id, r.completed, text)
	}
	if replayed && r.replayed == 0 {
		t.Errorf("the retry of %s was not answered from a recorder:\n%s", id, text)
	}
}

// faultRunSlow is latency and bandwidth: calls, the store and listings
// are slower but must work, and no link is dialed again.
func faultRunSlow(t *testing.T, h *faultHier, l *faultLink, row *faultRow, apply func()) {
	before := h.snap()
	apply()
	var ids []string
	id := call.NewID(call.KindApp, l.app)
	ids = append(ids, id)
	in := faultInput(200, "slow")
	r := h.invoke(l.app, id, in)
	row.call = r.cell(l)
	t.Logf("invocation: %v", r)
	l.checkCall(t, "invocation", r)
	if !r.ok(l.app, in) {
		t.Errorf("invocation across a slow link failed: %v", r)
	}
	row.store = "-"
	if l.name == "client-edge" {
		row.store = h.storeCell(t, "slow", faultFile, true)
	}
	row.ls = h.lsBoth(t, true)
	h.checkHealthy(t, l, row, before, row.fault == "latency")
	l.proxy.Clear()
	h.waitRecovered(t, row, &ids)
	// The retry gets the recorded answer: the app does not run again.
	h.retry(t, l.app, id, in)
	h.exactlyOnce(t, id, true)
	h.checkRuns(t, row, ids)
}

func faultRunLatency(t *testing.T, h *faultHier, l *faultLink, row *faultRow) {
	faultRunSlow(t, h, l, row, func() {
		if err := l.proxy.SetDelay(faultLatency); err != nil {
			t.Fatal(err)
		}
	})
}

func faultRunBandwidth(t *testing.T, h *faultHier, l *faultLink, row *faultRow) {
	faultRunSlow(t, h, l, row, func() {
		if err := l.proxy.SetRate(faultRate); err != nil {
			t.Fatal(err)
		}
	})
}

// faultRunReset cuts the link with RSTs: a request cut half way through
// its write, then retried with its ID; an answer cut on its way back after
// the app ran, then retried with its ID (the recorded answer comes back);
// a store file rewritten while the link is cut half way; listings just
// after every connection of the link was reset.
func faultRunReset(t *testing.T, h *faultHier, l *faultLink, row *faultRow) {
	var ids []string
	before := h.snap()

	// A request cut in the middle of its write.
	id := call.NewID(call.KindApp, l.app)
	ids = append(ids, id)
	in := faultInput(faultBig, "cut")
	fired := l.proxy.ResetAfter(shape.ToTarget, faultBig/2)
	r := h.invoke(l.app, id, in)
	row.call = "request cut: " + r.cell(l)
	l.checkCall(t, "invocation cut mid-request", r)
	select {
	case <-fired:
	default:
		t.Errorf("the reset did not fire during a %d-byte request", faultBig)
	}
	l.proxy.Clear()
	rr := h.retry(t, l.app, id, in)
	t.Logf("request cut: %v; retried with its ID: %v", r, rr)
	h.exactlyOnce(t, id, false)

	// An answer cut on its way back, after the app ran.
	var lost string
	for attempt := 1; ; attempt++ {
		id := call.NewID(call.KindApp, l.app)
		ids = append(ids, id)
		in := faultInput(100, "lost")
		r, ran := h.cutAnswer(t, l, id, in)
		l.checkCall(t, "invocation whose answer was cut", r)
		if ran && !r.ok(l.app, in) {
			lost = r.cell(l)
			rr := h.retry(t, l.app, id, in)
			t.Logf("answer cut: %v; retried with its ID: %v", r, rr)
			h.exactlyOnce(t, id, true)
			break
		}
		t.Logf("attempt %d: the answer was not cut (ran %v): %v", attempt, ran, r)
		if attempt == 3 {
			t.Errorf("could not cut an answer on its way back in %d attempts", attempt)
			break
		}
	}
	row.call += "; answer cut: " + lost

	// A store file rewritten while the link is cut half way: afterwards
	// it is the old version or the new one, whole.
	if l.name == "client-edge" {
		old, neu := faultInput(1000, "old"), faultInput(faultBig, "new")
		if _, err := h.store("rewritten", old, faultStoreBound); err != nil {
			t.Fatalf("store before the reset: %v", err)
		}
		fired := l.proxy.ResetAfter(shape.ToTarget, faultBig/2)
		took, err := h.store("rewritten", neu, faultStoreBound)
		row.store = fmt.Sprintf("ok %v", took.Round(100*time.Millisecond))
		if err != nil {
			row.store = fmt.Sprintf("error %v", took.Round(100*time.Millisecond))
			t.Logf("store rewrite cut half way: %v after %v", err, took)
		}
		row.store = "rewrite cut: " + row.store
		if took > faultStoreBound {
			t.Errorf("store rewrite cut half way took %v: %v", took, err)
		}
		select {
		case <-fired:
		default:
			t.Errorf("the reset did not fire during a %d-byte store write", faultBig)
		}
		l.proxy.Clear()
		var got []byte
		for deadline := time.Now().Add(faultRecoverBound); ; time.Sleep(200 * time.Millisecond) {
			if got, err = h.readStore("rewritten"); err == nil || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			t.Errorf("reading the rewritten file back: %v", err)
		} else if !bytes.Equal(got, old) && !bytes.Equal(got, neu) {
			t.Errorf("the file rewritten while the link was cut is neither version: %d bytes, %q...", len(got), got[:min(len(got), 40)])
		}
	} else {
		row.store = "-"
	}

	// Listings just after every connection of the link was reset.
	l.proxy.Reset()
	row.ls = h.lsBoth(t, false)
	h.checkHealthy(t, l, row, before, false)
	h.waitRecovered(t, row, &ids)
	h.checkRuns(t, row, ids)
}

// cutAnswer invokes app with id while the link holds each direction
// faultHold, watches the runner's own trace on its plain port, and resets
// the link as soon as the run is done, while the answer is still held on
// the link. ran reports whether the run was seen done before the reset.
func (h *faultHier) cutAnswer(t *testing.T, l *faultLink, id string, in []byte) (faultCallResult, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), faultCallBound+5*time.Second)
	defer cancel()
	tree, err := remote.Dial(ctx, "tcp", l.runner.local, remote.Options{Name: "runner", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer tree.Close()
	if err := l.proxy.SetDelay(faultHold); err != nil {
		t.Fatal(err)
	}
	defer l.proxy.Clear()
	done := make(chan faultCallResult, 1)
	go func() { done <- h.invoke(l.app, id, in) }()
	for {
		text, err := faultQuery(ctx, tree, "trace/"+id, 7, time.Second)
		if err == nil && faultParseTrace(string(text)).completed > 0 {
			l.proxy.Reset()
			return <-done, true
		}
		if err != nil && fs.KindOf(err) != fs.NotExist {
			t.Logf("reading the runner's trace: %v", err)
		}
		select {
		case r := <-done:
			return r, false
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// faultRunCut is blackhole and SIGSTOP: calls, the store and listings
// fail within their bounds, and all recovers once the fault is cleared.
func faultRunCut(t *testing.T, h *faultHier, l *faultLink, row *faultRow, apply, clear func()) {
	var ids []string
	before := h.snap()
	apply()
	id := call.NewID(call.KindApp, l.app)
	ids = append(ids, id)
	in := faultInput(200, "cut")
	r := h.invoke(l.app, id, in)
	row.call = r.cell(l)
	l.checkCall(t, "invocation", r)
	row.store = "-"
	if l.name == "client-edge" {
		row.store = h.storeCell(t, "cut", 4<<10, false)
	}
	row.ls = h.lsBoth(t, false)
	h.checkHealthy(t, l, row, before, false)
	clear()
	h.waitRecovered(t, row, &ids)
	rr := h.retry(t, l.app, id, in)
	t.Logf("under the fault: %v; retried with its ID after: %v", r, rr)
	h.exactlyOnce(t, id, false)
	h.checkRuns(t, row, ids)
}

func faultRunBlackhole(t *testing.T, h *faultHier, l *faultLink, row *faultRow) {
	faultRunCut(t, h, l, row, func() { l.proxy.Blackhole(true) }, l.proxy.Clear)
}

func faultRunStop(t *testing.T, h *faultHier, l *faultLink, row *faultRow) {
	p := l.parent.cmd.Process
	faultRunCut(t, h, l, row, func() {
		if err := p.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		// The signal is delivered to each thread in its own time: wait
		// until none runs any more.
		if err := faultWaitStopped(p.Pid, 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}, func() {
		if err := p.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
	})
}

// faultWaitStopped waits until every thread of process pid is stopped.
func faultWaitStopped(pid int, bound time.Duration) error {
	deadline := time.Now().Add(bound)
	for {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			return err
		}
		running := ""
		for _, task := range tasks {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name()))
			if err != nil {
				continue // the thread ended
			}
			// The state follows the command name, which is in parentheses.
			if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) && b[i+2] != 'T' && b[i+2] != 't' {
				running = task.Name()
				break
			}
		}
		if running == "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("thread %s of process %d still runs %v after SIGSTOP", running, pid, bound)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
