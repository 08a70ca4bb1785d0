package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// needTopology checks what scripts/topology needs: root, iproute2,
// nsenter and fuse3. Under CI a missing part fails the test.
func needTopology(t *testing.T) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, tool := range []string{"ip", "tc", "nsenter", "fusermount3"} {
		if _, err := exec.LookPath(tool); err != nil {
			if _, err := os.Stat("/usr/sbin/" + tool); err != nil {
				missing = append(missing, tool)
			}
		}
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		missing = append(missing, "/dev/fuse")
	}
	if len(missing) == 0 {
		return
	}
	msg := "the topology needs " + strings.Join(missing, ", ")
	if os.Getenv("CI") != "" {
		t.Fatal(msg + " (CI is set, so this fails instead of skipping)")
	}
	t.Skip(msg)
}

// topology runs scripts/topology with args and returns its output.
func topology(t *testing.T, bin string, timeout time.Duration, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", append([]string{"../../scripts/topology"}, args...)...)
	cmd.Env = append(os.Environ(), "STRATA_BIN="+bin)
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestTopology builds a reduced embodiment with scripts/topology: a cloud,
// two groups and one client each, every host in its own network
// namespace, links delayed by the project's delay line. Each client stores
// and reads back a file and invokes an app through its mount; one client's
// link is then shaped under threshold 2, and its detection unit switches to
// running the app it holds. `down` leaves no namespace, mount or process.
func TestTopology(t *testing.T) {
	needTopology(t)
	bin := strataBin(t)
	dir := filepath.Join(t.TempDir(), "topo")
	prefix := fmt.Sprintf("stt%d", os.Getpid()%100000)
	downDone := false
	down := func() {
		out, err := topology(t, bin, 2*time.Minute, "down", "-dir", dir)
		if err != nil {
			t.Errorf("topology down: %v\n%s", err, out)
		}
		downDone = true
	}
	t.Cleanup(func() {
		if !downDone {
			down()
		}
	})
	out, err := topology(t, bin, 3*time.Minute, "up", "-groups", "2", "-clients", "1", "-dir", dir, "-prefix", prefix)
	if err != nil {
		logs, _ := filepath.Glob(filepath.Join(dir, "logs", "*.log"))
		for _, l := range logs {
			b, _ := os.ReadFile(l)
			t.Logf("%s:\n%s", filepath.Base(l), b)
		}
		t.Fatalf("topology up: %v\n%s", err, out)
	}
	t.Logf("%s", out)
	namespaces := nsList(t, prefix)
	if len(namespaces) != 8 { // hub, cloud, 2 x (app edge, edge, client)
		t.Errorf("%d namespaces with prefix %s: %v", len(namespaces), prefix, namespaces)
	}

	mnt := func(client string) string { return filepath.Join(dir, "mnt", client) }
	invoke := func(client, app string, input []byte) (answer, where string) {
		t.Helper()
		ctl := filepath.Join(mnt(client), "apps", app, "ctl")
		if err := os.WriteFile(ctl, input, 0); err != nil {
			b, _ := os.ReadFile(filepath.Join(mnt(client), "apps", app, "err"))
			t.Fatalf("%s: invoking %s: %v (%s)", client, app, err, b)
		}
		a, err := os.ReadFile(filepath.Join(mnt(client), "apps", app, "out"))
		if err != nil {
			t.Fatal(err)
		}
		w, err := os.ReadFile(filepath.Join(mnt(client), "apps", app, "where"))
		if err != nil {
			t.Fatal(err)
		}
		return string(a), string(w)
	}

	// A store round trip and an invocation from each client, across the
	// namespaces and the delay lines.
	for _, c := range []string{"g1-c1", "g2-c1"} {
		data := make([]byte, 100<<10)
		rand.Read(data)
		p := filepath.Join(mnt(c), "store", "round-trip")
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatalf("%s: writing to the store: %v", c, err)
		}
		if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s: the store gave back %d bytes (%v)", c, len(got), err)
		}
		if a, w := invoke(c, "upper", []byte("hello")); a != "HELLO" || !strings.Contains(w, "route client/"+c+" > edge/") {
			t.Errorf("%s: upper answered %q, where %q", c, a, w)
		}
	}

	// The detection unit on g2-c1: past threshold 1 it holds upper; with
	// its link shaped to 32 KB/s (under threshold 2, 50 KB/s) a call with
	// a large input measures the link, and the next call runs at the
	// client with the same answer.
	const c = "g2-c1"
	for i := 0; i < 6; i++ {
		invoke(c, "upper", []byte("hello"))
	}
	waitStatus(t, mnt(c), "held upper ")
	if out, err := topology(t, bin, time.Minute, "shape", c, "256kbit", "-dir", dir); err != nil {
		t.Fatalf("topology shape: %v\n%s", err, out)
	}
	big := bytes.Repeat([]byte("x"), 32<<10)
	if a, _ := invoke(c, "upper", big); a != strings.ToUpper(string(big)) {
		t.Errorf("a 32 KiB call over the shaped link answered %d bytes", len(a))
	}
	st, _ := os.ReadFile(filepath.Join(mnt(c), "status"))
	if a, w := invoke(c, "upper", []byte("hello")); a != "HELLO" || !strings.HasPrefix(w, "client/"+c) {
		t.Errorf("over the shaped link upper answered %q from %q, want HELLO from client/%s; the client's status:\n%s", a, w, c, st)
	}
	// g1-c1's link is not shaped: it still goes to the edge.
	if _, w := invoke("g1-c1", "upper", []byte("hello")); strings.HasPrefix(w, "client/") {
		t.Errorf("the fast client ran upper itself: %q", w)
	}

	// down removes every namespace, mount and process it made.
	down()
	if ns := nsList(t, prefix); len(ns) != 0 {
		t.Errorf("namespaces left after down: %v", ns)
	}
	mounts, _ := os.ReadFile("/proc/mounts")
	if strings.Contains(string(mounts), dir) {
		t.Errorf("mounts left after down under %s", dir)
	}
	if out, _ := exec.Command("pgrep", "-f", bin+" (serve|mount|delay)").Output(); len(bytes.TrimSpace(out)) != 0 {
		t.Errorf("processes left after down: %s", out)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the state directory is left: %v", err)
	}
}

// nsList lists the network namespaces whose names begin with prefix-.
func nsList(t *testing.T, prefix string) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatalf("ip netns list: %v", err)
	}
	var ns []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], prefix+"-") {
			ns = append(ns, f[0])
		}
	}
	return ns
}

// waitStatus waits (30 s at most) until the client's own section of its
// /status has a line beginning with want.
func waitStatus(t *testing.T, mnt, want string) {
	t.Helper()
	var st []byte
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		st, _ = os.ReadFile(filepath.Join(mnt, "status"))
		headers := 0
		for _, line := range strings.Split(string(st), "\n") {
			if strings.HasPrefix(line, "# ") {
				if headers++; headers > 1 {
					break // the parent's section: not this tier
				}
			}
			if strings.HasPrefix(line, want) {
				return
			}
		}
	}
	t.Fatalf("the status never had a line %q:\n%s", want, st)
}
