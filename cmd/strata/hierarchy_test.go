package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"strata/fs"
	"strata/mount/remote"
	"strata/tiers/apps"
)

// tierProc is one `strata serve` process.
type tierProc struct {
	cmd         *exec.Cmd
	addr, local string
	logs        *logBuffer
	done        chan struct{}
}

var servingRE = regexp.MustCompile(`msg=serving .*addr=(\S+) local=(\S+)`)

// startTier runs `strata serve ROLE args...` and waits for its ports.
func startTier(t *testing.T, bin string, role string, args ...string) *tierProc {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"serve", role, "-log-level", "debug"}, args...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &tierProc{cmd: cmd, logs: new(logBuffer), done: make(chan struct{})}
	ports := make(chan [2]string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.logs.WriteString(line + "\n")
			if m := servingRE.FindStringSubmatch(line); m != nil {
				select {
				case ports <- [2]string{m[1], m[2]}:
				default:
				}
			}
		}
		close(ports)
		cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGCONT)
		cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("log of %s:\n%s", role, p.logs.String())
		}
	})
	select {
	case a, ok := <-ports:
		if !ok {
			<-p.done
			t.Fatalf("%s exited before listening:\n%s", role, p.logs.String())
		}
		p.addr, p.local = a[0], a[1]
	case <-time.After(60 * time.Second):
		t.Fatalf("%s did not listen within 60s", role)
	}
	return p
}

// hierarchySetup is what a test of tier processes starts from: the
// binary, the sample apps' modules, a directory, and in it the keys of
// one group (with the named clients, if any).
func hierarchySetup(t *testing.T, clients ...string) (bin string, mods map[string]string, dir, keys string) {
	t.Helper()
	bin = strataBin(t)
	mods, err := buildModulesOnce()
	if err != nil {
		t.Fatal(err)
	}
	dir = t.TempDir()
	keys = filepath.Join(dir, "keys")
	makeKeys(t, bin, keys, clients...)
	return bin, mods, dir, keys
}

// makeKeys makes in keys the keyring of one group, with the named
// clients, if any.
func makeKeys(t *testing.T, bin, keys string, clients ...string) {
	t.Helper()
	args := []string{"keygen", "-keys", keys, "-groups", "1"}
	if len(clients) > 0 {
		args = append(args, "-clients", strings.Join(clients, ","))
	}
	if out, errs, err := strataRun(bin, "", args...); err != nil {
		t.Fatalf("keygen: %v\n%s%s", err, out, errs)
	}
}

// deployApps deploys apps through the plain port addr of a cloud, and
// fails the test unless each is then at version 1.
func deployApps(t *testing.T, bin string, mods map[string]string, addr string, apps ...string) {
	t.Helper()
	for _, app := range apps {
		if out, errs, err := strataRun(bin, "", "deploy", "-addr", addr, app, mods[app]); err != nil || !strings.Contains(out, "deployed "+app+" version 1") {
			t.Fatalf("deploy %s: %v\n%s%s", app, err, out, errs)
		}
	}
}

// startAppEdgeEdge starts an app edge below parent, pinning upper, and an
// edge below it, with short bounds: 1 s steps and 3 s calls at the app
// edge, 2 s steps and 4 s calls at the edge.
func startAppEdgeEdge(t *testing.T, bin, dir, keys, parent string) (appedge, edge *tierProc) {
	t.Helper()
	appedge = startTier(t, bin, "appedge", "-listen", "127.0.0.1:0", "-local", "127.0.0.1:0", "-parent", parent,
		"-data", filepath.Join(dir, "appedge"), "-keys", keys, "-pin", "upper", "-pull-after", "-1", "-refresh", "500ms", "-timeout", "1s", "-call-timeout", "3s")
	edge = startTier(t, bin, "edge", "-listen", "127.0.0.1:0", "-local", "127.0.0.1:0", "-parent", appedge.addr,
		"-data", filepath.Join(dir, "edge"), "-keys", keys, "-timeout", "2s", "-call-timeout", "4s")
	return appedge, edge
}

// connectedTo returns which of tiers a log (of the tier or client below
// them) says was connected to last, by its latest "9P2000.L connected"
// line, or -1 if it names none.
func connectedTo(log string, tiers []*tierProc) int {
	which := -1
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "9P2000.L connected") {
			for i, p := range tiers {
				if strings.Contains(line, "("+p.addr+")") {
					which = i
				}
			}
		}
	}
	return which
}

// strataRun runs the strata binary and returns its stdout, stderr and
// error.
func strataRun(bin string, stdin string, args ...string) (string, string, error) {
	cmd := exec.Command(bin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

// caller returns a function that runs `strata call` with flags through
// the plain port addr: app on input in.
func caller(bin, addr string, flags ...string) func(app, in string) (string, string, error) {
	return func(app, in string) (string, string, error) {
		args := append([]string{"call", "-addr", addr}, flags...)
		return strataRun(bin, in, append(args, app)...)
	}
}

// waitCall makes the call of app on in every 200 ms until one succeeds
// with an answer ok accepts (its stdout and stderr), and fails the test
// with what and the last call's result if none has within bound.
func waitCall(t *testing.T, bound time.Duration, what string, call func(app, in string) (string, string, error), app, in string, ok func(out, errs string) bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		out, errs, err := call(app, in)
		if err == nil && ok(out, errs) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %q %q %v", what, out, errs, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// sha256AtCloud says whether a call of sha256 on "abc" with -where
// answered right and ran at the cloud.
func sha256AtCloud(out, errs string) bool {
	return strings.HasPrefix(out, "ba7816bf") && strings.Contains(errs, "ran at cloud")
}

var buildModulesOnce = sync.OnceValues(func() (map[string]string, error) {
	dir, err := os.MkdirTemp("", "strata-apps-")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	return apps.BuildAll(ctx, dir)
})

// The cloud stopped (SIGSTOP) and then killed: calls to cloud-only apps
// fail within their deadline naming the cloud, while upper at the app edge
// and /store keep working; once the cloud is back, calls succeed again
// without restarting anything.
func TestCloudStoppedAndKilled(t *testing.T) {
	bin, mods, dir, keys := hierarchySetup(t)
	cloud := startTier(t, bin, "cloud", "-listen", "127.0.0.1:0", "-local", "127.0.0.1:0", "-data", filepath.Join(dir, "cloud"), "-keys", keys)
	deployApps(t, bin, mods, cloud.local, "upper", "sha256")
	_, edge := startAppEdgeEdge(t, bin, dir, keys, cloud.addr)

	call := caller(bin, edge.local, "-where", "-call-timeout", "4s")
	// Wait (bounded) for the pinned replica and the compiled modules.
	waitCall(t, 90*time.Second, "upper never ran at the app edge", call, "upper", "hi", func(out, errs string) bool {
		return out == "HI" && strings.Contains(errs, "ran at appedge/g1")
	})
	waitOK := func(what string) {
		t.Helper()
		waitCall(t, 60*time.Second, what+": sha256 does not run at the cloud", call, "sha256", "abc", sha256AtCloud)
	}
	waitOK("before")

	cloudDown := func(what string) {
		t.Helper()
		start := time.Now()
		_, errs, err := call("sha256", "abc")
		took := time.Since(start)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Fatalf("%s: sha256 did not fail: %v %q", what, err, errs)
		}
		if !strings.Contains(errs, "cloud") {
			t.Fatalf("%s: the error does not name the cloud: %q", what, errs)
		}
		if took > 8*time.Second { // the 4 s budget, plus starting a process
			t.Fatalf("%s: the failure took %v", what, took)
		}
		out, errs, err := call("upper", "still")
		if err != nil || out != "STILL" || !strings.Contains(errs, "ran at appedge/g1") {
			t.Fatalf("%s: upper at the app edge: %q %q %v", what, out, errs, err)
		}
		data := what + " and the store works"
		if err := storeRoundTrip(edge.local, "note", data); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}

	// Stopped: the cloud accepts TCP but answers nothing.
	if err := cloud.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	cloudDown("cloud stopped")
	cloud.cmd.Process.Signal(syscall.SIGCONT)
	waitOK("after SIGCONT")

	// Killed, then started again on the same address.
	cloud.cmd.Process.Kill()
	<-cloud.done
	cloudDown("cloud killed")
	startTier(t, bin, "cloud", "-listen", cloud.addr, "-local", "127.0.0.1:0", "-data", filepath.Join(dir, "cloud"), "-keys", keys)
	waitOK("after restart")
}

// onTier dials the plain port addr of a tier and runs fn on its tree,
// with 10 s for the whole and 3 s for each step.
func onTier(addr string, fn func(ctx context.Context, tree *remote.Tree) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tree, err := remote.Dial(ctx, "tcp", addr, remote.Options{Timeout: 3 * time.Second})
	if err != nil {
		return err
	}
	defer tree.Close()
	return fn(ctx, tree)
}

// storeRoundTrip writes name in the /store of a tier's plain port and
// reads it back.
func storeRoundTrip(addr, name, data string) error {
	return onTier(addr, func(ctx context.Context, tree *remote.Tree) error {
		_, h, err := tree.Dir("store").Create(ctx, name, fs.WriteOnly|fs.Truncate, 0o644)
		if err != nil {
			return fmt.Errorf("store create: %w", err)
		}
		if _, err := h.WriteAt(ctx, []byte(data), 0); err != nil {
			h.Close(ctx)
			return fmt.Errorf("store write: %w", err)
		}
		if err := h.Close(ctx); err != nil {
			return fmt.Errorf("store close: %w", err)
		}
		got, err := readRemote(ctx, tree, "store/"+name)
		if err != nil || string(got) != data {
			return fmt.Errorf("store read back %q, %v", got, err)
		}
		return nil
	})
}

// writeTier replaces a file of a tier's plain port with text.
func writeTier(addr, name, text string) error {
	return onTier(addr, func(ctx context.Context, tree *remote.Tree) error {
		h, err := tree.File(name).Open(ctx, fs.WriteOnly|fs.Truncate)
		if err != nil {
			return err
		}
		if _, err := h.WriteAt(ctx, []byte(text), 0); err != nil {
			h.Close(ctx)
			return err
		}
		return h.Close(ctx)
	})
}

// readTier reads a file of a tier's plain port (of its /store, for
// "store/NAME").
func readTier(addr, name string) (string, error) {
	var b []byte
	err := onTier(addr, func(ctx context.Context, tree *remote.Tree) (err error) {
		b, err = readRemote(ctx, tree, name)
		return err
	})
	return string(b), err
}
