package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"strata/tiers/up"
)

// freeBase returns a first port whose layout ports look free.
func freeBase(t *testing.T) int {
	t.Helper()
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if p > 60000 {
			continue
		}
		ok := true
		for _, off := range []int{0, 1, 10, 11, 12, 13} {
			l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+off))
			if err != nil {
				ok = false
				break
			}
			l.Close()
		}
		if ok {
			return p
		}
	}
	t.Fatal("no free ports")
	return 0
}

func requireFUSE(t *testing.T) {
	t.Helper()
	_, err1 := os.Stat("/dev/fuse")
	_, err2 := exec.LookPath("fusermount3")
	if err1 != nil || err2 != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("FUSE is needed: /dev/fuse: %v; fusermount3: %v", err1, err2)
		}
		t.Skip("no FUSE here")
	}
}

// sh runs a shell command in dir and returns its output and error.
func sh(dir, script string) (string, error) {
	cmd := exec.Command("sh", "-c", script)
	cmd.Dir = dir
	var b bytes.Buffer
	cmd.Stdout, cmd.Stderr = &b, &b
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		return "", err
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return b.String(), err
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-done
		return b.String(), errHung
	}
}

var errHung = &exec.Error{Name: "sh", Err: os.ErrDeadlineExceeded}

// startMount runs `strata mount` and waits until the mount answers.
func startMount(t *testing.T, bin, edge, key, data, mnt string, extra ...string) (*exec.Cmd, *logBuffer, chan struct{}) {
	t.Helper()
	args := append([]string{"mount", "-edge", edge, "-key", key, "-data", data, "-local", "127.0.0.1:0", "-timeout", "2s", "-call-timeout", "4s"}, extra...)
	cmd := exec.Command(bin, append(args, mnt)...)
	logs := new(logBuffer)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		exec.Command("fusermount3", "-u", "-z", mnt).Run()
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(mnt, "status")); err == nil {
			return cmd, logs, done
		}
		select {
		case <-done:
			t.Fatalf("strata mount exited:\n%s", logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the mount did not come up:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The client tier mounted for shell users: ordinary tools on the store and
// the apps, the detection and call units, an edge that goes away and comes
// back, SIGTERM, and a stale mountpoint after kill -9.
func TestMountShell(t *testing.T) {
	requireFUSE(t)
	bin, err := buildStrata()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	base := freeBase(t)
	upArgs := []string{"up", "-dir", dir, "-port", strconv.Itoa(base), "-log-level", "warn"}
	upCmd := exec.Command(bin, upArgs...)
	upLogs := new(logBuffer)
	upCmd.Stdout, upCmd.Stderr = upLogs, upLogs
	if err := upCmd.Start(); err != nil {
		t.Fatal(err)
	}
	upDone := make(chan struct{})
	go func() { upCmd.Wait(); close(upDone) }()
	t.Cleanup(func() { upCmd.Process.Kill(); <-upDone })
	var m *up.Manifest
	for deadline := time.Now().Add(5 * time.Minute); ; {
		if m, err = up.ReadManifest(dir); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("strata up did not come up:\n%s", upLogs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	edge, _ := m.Find("edge", "g1")
	key := m.Clients[0].Key
	mnt := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(mnt, 0o755)
	// Threshold 2 far above loopback speed, so that a held copy runs here.
	mcmd, mlogs, mdone := startMount(t, bin, edge.Addr, key, filepath.Join(dir, "client"), mnt, "-threshold2", "1000000000000")

	run := func(script string) string {
		t.Helper()
		out, err := sh(mnt, script)
		if err != nil {
			t.Fatalf("%s: %v\n%s\nmount log:\n%s", script, err, out, mlogs.String())
		}
		return out
	}
	// The store with ordinary tools.
	run("echo hello > store/a && echo more >> store/a && mkdir store/d && cp store/a store/d/b && mv store/d/b store/d/c && rm store/a")
	if got := run("cat store/d/c"); got != "hello\nmore\n" {
		t.Fatalf("store: %q", got)
	}
	if got := run("ls -l store/d | tail -1"); !strings.Contains(got, " 11 ") || !strings.HasSuffix(strings.TrimSpace(got), "c") {
		t.Fatalf("ls -l: %q", got)
	}
	run("dd if=/dev/urandom of=store/big bs=4k count=64 2>/dev/null && echo x | tee store/t > /dev/null")
	big, err := os.ReadFile(filepath.Join(mnt, "store/big"))
	if err != nil || len(big) != 256<<10 {
		t.Fatalf("dd wrote %d bytes, %v", len(big), err)
	}
	sum := sha256.Sum256(big)
	if got := run("sha256sum store/big"); !strings.HasPrefix(got, hex.EncodeToString(sum[:])) {
		t.Fatalf("sha256sum: %q", got)
	}
	// Apps, shell style and on one descriptor.
	if got := run("echo hello > apps/upper/ctl && cat apps/upper/out"); got != "HELLO\n" {
		t.Fatalf("upper: %q", got)
	}
	if got := run("head -1 apps/upper/where"); got != "appedge/g1\n" {
		t.Fatalf("where: %q", got)
	}
	if got := run("exec 3<>apps/wc/ctl; printf 'a b\\nc\\n' >&3; cat <&3"); got != "      2       3       6\n" {
		t.Fatalf("wc on one descriptor: %q", got)
	}
	// A failing app: the shell sees an error, err says why.
	if out, err := sh(mnt, "printf 'timeout 300ms' > /dev/null; : > apps/nosuch/ctl"); err == nil {
		t.Fatalf("a missing app did not fail: %q", out)
	}
	// Past threshold 1 the client downloads sha256 and, on this "slow"
	// link, runs it itself.
	for range 7 {
		run("printf abc > apps/sha256/ctl")
	}
	for deadline := time.Now().Add(20 * time.Second); ; {
		run("printf abc > apps/sha256/ctl")
		if w := run("head -1 apps/sha256/where"); w == "client/"+m.Clients[0].Name+"\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sha256 never ran at the client:\n%s", run("cat apps/sha256/where status"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := run("cat apps/sha256/out"); !strings.HasPrefix(got, "ba7816bf") {
		t.Fatalf("local sha256: %q", got)
	}
	st := run("cat status")
	for _, s := range []string{"threshold-1 5", "threshold-2 ", "link-speed "} {
		if !strings.Contains(st, s) {
			t.Fatalf("status lacks %q:\n%s", s, st)
		}
	}

	// The edge goes away: ls does not hang, a held app still runs, a
	// forwarded one fails within its deadline with a reason.
	upCmd.Process.Signal(syscall.SIGKILL)
	<-upDone
	start := time.Now()
	if _, err := sh(mnt, "ls store"); time.Since(start) > 15*time.Second || err == errHung {
		t.Fatalf("ls with the edge down took %v: %v", time.Since(start), err)
	}
	if got := run("printf abc > apps/sha256/ctl && cat apps/sha256/out"); !strings.HasPrefix(got, "ba7816bf") {
		t.Fatalf("held copy with the edge down: %q", got)
	}
	start = time.Now()
	out, err := sh(mnt, "env echo x > apps/upper/ctl")
	if err == nil || time.Since(start) > 15*time.Second {
		t.Fatalf("upper with the edge down: %v after %v: %q", err, time.Since(start), out)
	}
	if e := run("cat apps/upper/err"); !strings.Contains(e, "edge") {
		t.Fatalf("err does not say the edge is down: %q", e)
	}
	// The edge is back: everything works again without remounting.
	upCmd = exec.Command(bin, upArgs...)
	upCmd.Stdout, upCmd.Stderr = upLogs, upLogs
	if err := upCmd.Start(); err != nil {
		t.Fatal(err)
	}
	upDone = make(chan struct{})
	go func() { upCmd.Wait(); close(upDone) }()
	for deadline := time.Now().Add(60 * time.Second); ; {
		if out, err := sh(mnt, "echo back > apps/upper/ctl && cat apps/upper/out"); err == nil && out == "BACK\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the mount did not recover:\n%s", mlogs.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	if got := run("cat store/d/c"); got != "hello\nmore\n" {
		t.Fatalf("store after the edge came back: %q", got)
	}

	// kill -9 leaves a stale mountpoint; the next start cleans it.
	mcmd.Process.Signal(syscall.SIGKILL)
	<-mdone
	if _, err := os.Stat(filepath.Join(mnt, "status")); err == nil {
		t.Fatal("the mount still answers after kill -9")
	}
	_, _, mdone = startMount(t, bin, edge.Addr, key, filepath.Join(dir, "client"), mnt)
	if got := run("cat store/d/c"); got != "hello\nmore\n" {
		t.Fatalf("after remount: %q", got)
	}
	// SIGTERM unmounts cleanly (done by the cleanup; check here too).
	_ = mdone
}
