package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"strata/tiers/up"
)

// startUp runs `strata up` and waits for its manifest.
func startUp(t *testing.T, bin, dir string) (*exec.Cmd, *logBuffer, chan struct{}) {
	t.Helper()
	os.Remove(filepath.Join(dir, up.ManifestFile))
	cmd := exec.Command(bin, "up", "-dir", dir, "-port", "0", "-log-level", "info")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	logs := new(logBuffer)
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			logs.WriteString("stdout: " + sc.Text() + "\n")
			if strings.HasPrefix(sc.Text(), "Strata is up") {
				ready <- true
			}
		}
		cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
	})
	select {
	case <-ready:
	case <-done:
		t.Fatalf("strata up exited:\n%s", logs.String())
	case <-time.After(5 * time.Minute):
		t.Fatalf("strata up did not come up within 5 minutes:\n%s", logs.String())
	}
	return cmd, logs, done
}

// `strata up` from nothing: every tier in up.json, calls through the
// edge, status, a clean stop on SIGTERM, and a restart that keeps the
// keys, the apps and the store.
func TestUpEndToEnd(t *testing.T) {
	bin := strataBin(t)
	dir := t.TempDir()
	cmd, logs, done := startUp(t, bin, dir)
	m, err := up.ReadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	roles := map[string]int{}
	for _, e := range m.Tiers {
		roles[e.Role]++
		if e.Name == "" || e.Addr == "" || !strings.HasPrefix(e.Local, "127.0.0.1:") {
			t.Fatalf("bad entry %+v", e)
		}
	}
	if roles["cloud"] != 1 || roles["appedge"] != 1 || roles["edge"] != 1 || len(m.Clients) < 2 {
		t.Fatalf("up.json lists %v and %d clients", roles, len(m.Clients))
	}
	out, errs, err := strataRun(bin, "hello", "call", "-dir", dir, "-where", "upper")
	if err != nil || out != "HELLO" || !strings.Contains(errs, "ran at appedge/g1") {
		t.Fatalf("call upper: %q %q %v", out, errs, err)
	}
	out, errs, err = strataRun(bin, "a b\n", "call", "-dir", dir, "-client", m.Clients[1].Name, "-where", "wc")
	if err != nil || out != "      1       2       4\n" || !strings.Contains(errs, "ran at cloud") {
		t.Fatalf("call wc as a client: %q %q %v", out, errs, err)
	}
	if _, errs, err := strataRun(bin, "", "call", "-dir", dir, "nosuchapp"); err == nil || !strings.Contains(errs, "nosuchapp") {
		t.Fatalf("call of a missing app: %q %v", errs, err)
	}
	out, _, err = strataRun(bin, "", "status", "-dir", dir)
	if err != nil || !strings.Contains(out, "tier cloud") || !strings.Contains(out, "tier appedge/g1") || !strings.Contains(out, "tier edge/g1") {
		t.Fatalf("status: %q %v", out, err)
	}
	edge, _ := m.Find("edge", "g1")
	if err := storeRoundTrip(edge.Local, "kept", "kept across restarts"); err != nil {
		t.Fatal(err)
	}
	keyset, err := os.ReadFile(filepath.Join(m.Keys, "link-a-g1.keyset"))
	if err != nil {
		t.Fatal(err)
	}

	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("strata up did not stop on SIGTERM")
	}
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("strata up exited %d on SIGTERM:\n%s", code, logs.String())
	}

	startUp(t, bin, dir)
	m, err = up.ReadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := os.ReadFile(filepath.Join(m.Keys, "link-a-g1.keyset")); err != nil || string(again) != string(keyset) {
		t.Fatal("the restart made new keys")
	}
	edge, _ = m.Find("edge", "g1")
	got, err := readTier(edge.Local, "store/kept")
	if err != nil || got != "kept across restarts" {
		t.Fatalf("after the restart the store has %q, %v", got, err)
	}
	out, _, err = strataRun(bin, "abc", "call", "-dir", dir, "sha256")
	if err != nil || !strings.HasPrefix(out, "ba7816bf") {
		t.Fatalf("after the restart: %q %v", out, err)
	}
}
