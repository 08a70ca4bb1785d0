package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"strata/fs/objstore/s3test"
)

// Two cloud nodes on one object store serve the same apps: an app
// deployed through one node is served through the other at once, an app
// edge given both nodes' addresses (-parent A,B) runs its calls through
// either, and when the node it is on is killed, calls go on through the
// other.
//
// The bounds: a deploy at one node is found by the other at the first
// request for an app it does not hold (it reads the manifest again), and
// a new version of an app it holds within -refresh (500 ms here) plus a
// check of the manifest; the other node compiles it when it sees it. After
// the kill, every call succeeds, each within its 4 s budget: the app
// edge's link to the dead node fails at once (connection reset), and its
// next dial moves to the other address.
func TestCloudNodesShareObjectStore(t *testing.T) {
	bin, mods, dir, keys := hierarchySetup(t)
	g := s3test.Start(t, "strata")
	g.Env(t)
	store := g.URL("strata", "apps")

	nodes := make([]*tierProc, 2)
	for i := range nodes {
		nodes[i] = startTier(t, bin, "cloud", "-listen", "127.0.0.1:0", "-local", "127.0.0.1:0",
			"-data", filepath.Join(dir, fmt.Sprint("cloud", i)), "-keys", keys, "-store", store, "-refresh", "500ms")
	}
	deploy := func(node int, app string) {
		t.Helper()
		out, errs, err := strataRun(bin, "", "deploy", "-addr", nodes[node].local, app, mods[app])
		if err != nil || !strings.Contains(out, "deployed "+app) {
			t.Fatalf("deploy %s through node %d: %v\n%s%s", app, node, err, out, errs)
		}
	}
	deploy(0, "upper")
	deploy(0, "sha256")
	// Node 1 holds what was deployed through node 0, at once.
	if info, err := readTier(nodes[1].local, "apps/sha256/info"); err != nil || !strings.Contains(info, "version 1\n") {
		t.Fatalf("node 1 on sha256, deployed through node 0: %q, %v", info, err)
	}
	// Limits set through one node hold at the other: they are kept with
	// the app's record in the shared repo, seen within -refresh.
	if err := writeTier(nodes[0].local, "apps/sha256/limits", "timeout 700ms\nmemory-mib 48\n"); err != nil {
		t.Fatalf("limits of sha256 through node 0: %v", err)
	}
	for start := time.Now(); ; time.Sleep(50 * time.Millisecond) {
		got, err := readTier(nodes[1].local, "apps/sha256/limits")
		if err == nil && strings.HasPrefix(got, "timeout 700ms\nmemory-mib 48\n# the app's own") {
			t.Logf("limits set through node 0 seen at node 1 after %v", time.Since(start).Round(time.Millisecond))
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("limits of sha256 at node 1, set through node 0: %q, %v", got, err)
		}
	}
	if err := writeTier(nodes[1].local, "apps/sha256/limits", ""); err != nil {
		t.Fatalf("default limits of sha256 through node 1: %v", err)
	}

	appedge, edge := startAppEdgeEdge(t, bin, dir, keys, nodes[0].addr+","+nodes[1].addr)
	call := caller(bin, edge.local, "-where", "-call-timeout", "4s")
	waitCall(t, 90*time.Second, "sha256 never ran at the cloud", call, "sha256", "abc", sha256AtCloud)

	// The node the app edge is on: its latest connection says.
	on := func() int {
		which := connectedTo(appedge.logs.String(), nodes)
		if which < 0 {
			t.Fatalf("the app edge's log names no cloud node it connected to:\n%s", appedge.logs.String())
		}
		return which
	}
	first := on()
	other := 1 - first

	// An app deployed through the node the app edge is not on is served
	// through the one it is on. That node finds it at the first call; it
	// compiles it within -refresh of the deploy (or at that first call, if
	// sooner), which on a loaded machine may take longer than a call's
	// budget: the bound here is 30 s.
	deploy(other, "wc")
	start := time.Now()
	for tries := 1; ; tries++ {
		out, errs, err := call("wc", "one two\n")
		if err == nil && len(strings.Fields(out)) == 3 && strings.Fields(out)[1] == "2" && strings.Contains(errs, "ran at cloud") {
			t.Logf("app edge on node %d; wc, deployed through node %d, ran after %v (call %d)", first, other, time.Since(start).Round(time.Millisecond), tries)
			break
		}
		if time.Since(start) > 30*time.Second {
			t.Fatalf("wc, deployed through node %d, called through node %d: %q %q %v", other, first, out, errs, err)
		}
		if strings.Contains(errs, "not deployed") {
			t.Fatalf("node %d does not find wc, deployed through node %d: %q", first, other, errs)
		}
		time.Sleep(200 * time.Millisecond)
	}

	// The node the app edge is on, killed: every call goes on, through
	// the other node.
	nodes[first].cmd.Process.Kill()
	<-nodes[first].done
	for i := range 10 {
		start := time.Now()
		out, errs, err := call("sha256", "abc")
		took := time.Since(start)
		if err != nil || !sha256AtCloud(out, errs) {
			t.Fatalf("call %d after node %d was killed: %q %q %v", i, first, out, errs, err)
		}
		if took > 6*time.Second { // the 4 s budget, plus starting a process
			t.Fatalf("call %d after the kill took %v", i, took)
		}
		if i == 0 {
			t.Logf("first call after the kill of node %d: %v", first, took.Round(time.Millisecond))
		}
	}
	if now := on(); now != other {
		t.Fatalf("the app edge's latest connection is to node %d, want %d", now, other)
	}
	// And the surviving node takes deploys: a new version is served.
	deploy(other, "upper")
	if out, _, err := call("upper", "still"); err != nil || out != "STILL" {
		t.Fatalf("upper after the kill: %q, %v", out, err)
	}
}
