package main

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"strata/fs/objstore/s3test"
)

// Two edges of one group on one object store serve the same files: a file
// closed through one is read whole through the other, and a client mounted
// with both edges' addresses goes on through the other when its edge is
// killed, with its files all there.
func TestEdgesShareObjectStore(t *testing.T) {
	requireFUSE(t)
	bin, mods, dir, keys := hierarchySetup(t, "c1")
	g := s3test.Start(t, "strata")
	g.Env(t)
	store := g.URL("strata", "group1")

	cloud := startTier(t, bin, "cloud", "-listen", "127.0.0.1:0", "-local", "127.0.0.1:0", "-data", filepath.Join(dir, "cloud"), "-keys", keys)
	if out, errs, err := strataRun(bin, "", "deploy", "-addr", cloud.local, "upper", mods["upper"]); err != nil {
		t.Fatalf("deploy: %v\n%s%s", err, out, errs)
	}
	appedge := startTier(t, bin, "appedge", "-listen", "127.0.0.1:0", "-local", "127.0.0.1:0", "-parent", cloud.addr,
		"-data", filepath.Join(dir, "appedge"), "-keys", keys, "-pin", "upper")
	edges := make([]*tierProc, 2)
	for i := range edges {
		edges[i] = startTier(t, bin, "edge", "-listen", "127.0.0.1:0", "-local", "127.0.0.1:0", "-parent", appedge.addr,
			"-data", filepath.Join(dir, fmt.Sprint("edge", i)), "-keys", keys, "-store", store, "-timeout", "2s")
	}

	// Through the plain ports (the client "local" of each edge).
	if err := storeRoundTrip(edges[0].local, "from-edge-0", "written through edge 0"); err != nil {
		t.Fatal(err)
	}
	if got, err := readTier(edges[1].local, "store/from-edge-0"); err != nil || got != "written through edge 0" {
		t.Fatalf("edge 1 reads %q, %v", got, err)
	}

	// Wait (bounded) for the pinned replica and its compiled module, so
	// that the first call through the mount is not also the app's first.
	waitCall(t, 90*time.Second, "upper never answered", caller(bin, edges[0].local), "upper", "hi", func(out, _ string) bool { return out == "HI" })

	// A client mounted with both edges.
	mnt := filepath.Join(dir, "mnt")
	os.MkdirAll(mnt, 0o755)
	_, logs, _ := startMount(t, bin, edges[0].addr+","+edges[1].addr, filepath.Join(keys, "clients", "c1.keyset"), filepath.Join(dir, "client"), mnt)
	if out, err := sh(mnt, "echo kept > store/before && cat store/before && echo hi | tee apps/upper/ctl >/dev/null && cat apps/upper/out"); err != nil || out != "kept\nHI\n" {
		t.Fatalf("through the mount: %q, %v\n%s", out, err, logs)
	}
	// The edge the client is on (its latest connection says), killed.
	which := connectedTo(logs.String(), edges)
	if which < 0 {
		t.Fatalf("the client's log names no edge it connected to:\n%s", logs)
	}
	edges[which].cmd.Process.Kill()
	<-edges[which].done
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := sh(mnt, "cat store/before && echo after > store/after && cat store/after")
		if err == nil && out == "kept\nafter\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the mount did not go on through the other edge: %q, %v\n%s", out, err, logs)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("edge %d killed; the client went on through edge %d", which, 1-which)
}
