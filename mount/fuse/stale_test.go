package fuse

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"strata/fs/memfs"
)

// TestCleanStale kills a process serving a mount (this test binary, run
// again as a child that mounts and waits), which leaves a dead mount that
// fails every access with ENOTCONN; CleanStale removes it and a new Mount
// takes its place.
func TestCleanStale(t *testing.T) {
	needFUSE(t)
	mp := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mp, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lazyUnmount(mp) }) // before the temporary directory goes

	if err := CleanStale(mp); err != nil {
		t.Fatalf("CleanStale of a plain directory: %v", err)
	}
	if err := CleanStale(filepath.Join(mp, "missing")); err != nil {
		t.Fatalf("CleanStale of a missing path: %v", err)
	}

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+mp)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	line := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(out)
		s.Scan()
		line <- s.Text()
	}()
	select {
	case l := <-line:
		if l != "mounted" {
			t.Fatalf("the child said %q, want \"mounted\"", l)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the child did not mount within 30s")
	}
	if !isMounted(t, mp) {
		t.Fatal("the child's mount is not in /proc/self/mountinfo")
	}
	if err := os.WriteFile(filepath.Join(mp, "f"), []byte("x"), 0o644); err != nil {
		t.Fatalf("writing to the child's mount: %v", err)
	}
	// A live mount is left alone.
	if err := CleanStale(mp); err != nil || !isMounted(t, mp) {
		t.Fatalf("CleanStale of a live mount: %v; mounted %v", err, isMounted(t, mp))
	}

	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	var statErr error
	for range 100 {
		if _, statErr = os.Stat(mp); errors.Is(statErr, syscall.ENOTCONN) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !errors.Is(statErr, syscall.ENOTCONN) {
		t.Fatalf("stat of the dead mount: %v, want ENOTCONN", statErr)
	}
	if _, err := Mount(context.Background(), memfs.New(), mp, Options{}); err == nil || !errors.Is(err, syscall.ENOTCONN) {
		t.Errorf("Mount on a dead mount: %v, want an ENOTCONN error", err)
	}

	if err := CleanStale(mp); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(mp); err != nil {
		t.Fatalf("stat after CleanStale: %v", err)
	}
	if isMounted(t, mp) {
		t.Fatal("still mounted after CleanStale")
	}

	log, _ := testLog(t)
	m, err := Mount(context.Background(), memfs.New(), mp, Options{Log: log})
	if err != nil {
		t.Fatalf("Mount after CleanStale: %v", err)
	}
	defer unmountT(t, m, mp)
	wantSh(t, mp, `echo again > f && cat f`, "again\n")
}
