package up

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"strata/fs"
	"strata/mount/remote"
	"strata/tiers/call"
	"strata/tiers/keyring"
	"strata/tiers/tier"
	"strata/tiers/wasm"
)

// TestLoad runs 100 concurrent clients against two groups for a bounded
// time, each on its own encrypted link, mixing store round trips (create,
// write, close, read back, remove) with invocations of upper (app-edge
// hits) and sha256 (cloud fall-throughs). Every operation must succeed and
// give back what it should, and once the clients have gone the process's
// goroutines and heap come back to where they were.
func TestLoad(t *testing.T) {
	workers, dur := 100, 8*time.Second
	if testing.Short() || raceEnabled {
		workers, dur = 30, 3*time.Second // the shorter run, for -race
	}
	// Generous app time limits: this test is about losing nothing under
	// load on a machine the test itself saturates; limits have their own
	// tests.
	h := start(t, Config{Groups: 2, Limits: wasm.Limits{Timeout: time.Minute}, CallTimeout: time.Minute})
	ctx := context.Background()

	settle := func() (goroutines int, heap uint64) {
		var ms runtime.MemStats
		for range 3 {
			runtime.GC()
			time.Sleep(50 * time.Millisecond)
		}
		runtime.ReadMemStats(&ms)
		return ownGoroutines(), ms.HeapInuse
	}
	// A first round trip on every path, so that lazily made state (links
	// to parents, compiled modules, replicas) is part of the baseline.
	for _, g := range h.Groups {
		for _, c := range g.Clients {
			tr, err := remote.Dial(ctx, "tcp", g.Edge.Addr(), remote.Options{Dial: h.Keys.Dial(c, keyring.Client(c))})
			if err != nil {
				t.Fatal(err)
			}
			for _, app := range []string{"upper", "sha256"} {
				if r, err := tier.Forward(ctx, tr, &call.Request{ID: call.NewID(call.KindApp, app), App: app, Input: []byte("warm"), Budget: 10 * time.Second}); err != nil || !r.OK {
					t.Fatalf("warming %s through %s: %+v %v", app, c, r, err)
				}
			}
			tr.Close()
		}
	}
	baseG, baseHeap := settle()

	var (
		ops    atomic.Int64
		errMu  sync.Mutex
		errs   []string
		wg     sync.WaitGroup
		stopAt = time.Now().Add(dur)
	)
	fail := func(format string, a ...any) {
		errMu.Lock()
		defer errMu.Unlock()
		if len(errs) < 20 {
			errs = append(errs, fmt.Sprintf(format, a...))
		}
	}
	for w := range workers {
		g := h.Groups[w%len(h.Groups)]
		c := g.Clients[(w/len(h.Groups))%len(g.Clients)]
		wg.Go(func() {
			tr, err := remote.Dial(ctx, "tcp", g.Edge.Addr(), remote.Options{Dial: h.Keys.Dial(c, keyring.Client(c))})
			if err != nil {
				fail("worker %d: dial: %v", w, err)
				return
			}
			defer tr.Close()
			data := make([]byte, 8<<10)
			for i := 0; time.Now().Before(stopAt) && i < 10000; i++ {
				switch i % 3 {
				case 0:
					rand.Read(data)
					name := fmt.Sprintf("w%d-%d", w, i)
					if err := storeRoundTrip(ctx, tr, name, data); err != nil {
						fail("worker %d (%s): store %s: %v", w, c, name, err)
						return
					}
				default:
					app, want := "upper", []byte(fmt.Sprintf("HELLO %d", i))
					in := bytes.ToLower(want)
					if i%3 == 2 {
						app, want = "sha256", nil
					}
					r, err := tier.Forward(ctx, tr, &call.Request{ID: call.NewID(call.KindApp, app), App: app, Input: in, Budget: time.Minute})
					switch {
					case err != nil:
						fail("worker %d (%s): %s: %v", w, c, app, err)
						return
					case !r.OK:
						fail("worker %d (%s): %s failed at %s: %s", w, c, app, r.Where, r.Reason)
						return
					case want != nil && !bytes.Equal(r.Out, want):
						fail("worker %d (%s): %s answered %q, want %q", w, c, app, r.Out, want)
						return
					case want == nil && len(bytes.TrimSpace(r.Out)) != 64:
						fail("worker %d (%s): sha256 answered %q", w, c, r.Out)
						return
					}
				}
				ops.Add(1)
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d operations done, and these failed:\n%s", ops.Load(), strings.Join(errs, "\n"))
	}
	t.Logf("%d clients, %d operations in %s, no failure", workers, ops.Load(), dur)

	// Back to the baseline: the clients' connections, fids and handles
	// are gone once they have disconnected.
	var g int
	var heap uint64
	deadline := time.Now().Add(15 * time.Second)
	for {
		g, heap = settle()
		// The heap keeps what the tiers remember on purpose (the recorded
		// replies and traces of the last 10 minutes, bounded) and the
		// buffer pools of the live links.
		if g <= baseG+5 && heap <= baseHeap+64<<20 {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Fatalf("after the load: %d goroutines (baseline %d), heap %d MiB (baseline %d MiB)\n%s", g, baseG, heap>>20, baseHeap>>20, buf[:min(n, 64<<10)])
		}
		time.Sleep(200 * time.Millisecond)
	}
	_, parked := goroutineCounts()
	if parked > 4*workers {
		t.Errorf("%d goroutines parked on p9 connections, more than the load's concurrency could leave", parked)
	}
	t.Logf("goroutines %d (baseline %d) and %d parked p9 receivers, heap %d MiB (baseline %d MiB)", g, baseG, parked, heap>>20, baseHeap>>20)
}

// ownGoroutines counts the goroutines, less those that hugelgupf/p9's
// server keeps parked to receive on a connection: it starts one per
// request in flight and never lets them go while the connection lives, so
// a tier's long-lived link to its parent keeps as many as its peak
// concurrency (at most MaxOutstanding). Those are counted apart, by
// parkedReceivers.
func ownGoroutines() int {
	n, parked := goroutineCounts()
	return n - parked
}

func goroutineCounts() (all, parked int) {
	buf := make([]byte, 8<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		all++
		if strings.Contains(g, "[sync.Mutex.Lock") && strings.Contains(g, "p9.(*connState).handleRequest") {
			parked++
		}
	}
	return all, parked
}

// storeRoundTrip creates name in the client's store, writes data, closes
// (the acknowledgement), reads it back and removes it.
func storeRoundTrip(ctx context.Context, tr *remote.Tree, name string, data []byte) error {
	d := tr.Dir("store")
	_, h, err := d.Create(ctx, name, fs.WriteOnly|fs.Excl, 0o644)
	if err != nil {
		return err
	}
	if _, err := h.WriteAt(ctx, data, 0); err != nil {
		h.Close(ctx)
		return err
	}
	if err := h.Close(ctx); err != nil {
		return err
	}
	got, err := fs.ReadAll(ctx, tr.File("store/"+name), 1<<20)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, data) {
		return errors.New("read back different bytes")
	}
	return d.Remove(ctx, name)
}

// TestRotationUnderLoad rotates a client's key and both links' keys of a
// group while 20 workers use the group, each dialing a new link for every
// few operations: no operation fails, before, during or after.
func TestRotationUnderLoad(t *testing.T) {
	h := start(t, Config{Limits: wasm.Limits{Timeout: time.Minute}, CallTimeout: time.Minute})
	ctx := context.Background()
	g := h.Groups[0]
	c := g.Clients[0]
	var (
		ops   atomic.Int64
		errMu sync.Mutex
		errs  []string
		wg    sync.WaitGroup
		stop  = make(chan struct{})
	)
	fail := func(format string, a ...any) {
		errMu.Lock()
		defer errMu.Unlock()
		if len(errs) < 10 {
			errs = append(errs, fmt.Sprintf(format, a...))
		}
	}
	for w := range 20 {
		wg.Go(func() {
			for round := 0; round < 1000; round++ {
				select {
				case <-stop:
					return
				default:
				}
				tr, err := remote.Dial(ctx, "tcp", g.Edge.Addr(), remote.Options{Dial: h.Keys.Dial(c, keyring.Client(c))})
				if err != nil {
					fail("worker %d: dial in round %d: %v", w, round, err)
					return
				}
				for i := range 3 {
					in := fmt.Sprintf("w%d r%d i%d", w, round, i)
					r, err := tier.Forward(ctx, tr, &call.Request{ID: call.NewID(call.KindApp, "upper"), App: "upper", Input: []byte(in), Budget: time.Minute})
					if err != nil || !r.OK || string(r.Out) != strings.ToUpper(in) {
						fail("worker %d: call in round %d: %+v %v", w, round, r, err)
						tr.Close()
						return
					}
					ops.Add(1)
				}
				tr.Close()
			}
		})
	}
	time.Sleep(700 * time.Millisecond)
	for _, p := range []keyring.Purpose{keyring.Client(c), keyring.LinkA(g.Name), keyring.LinkB(g.Name)} {
		if _, err := h.Keys.Rotate(p); err != nil {
			t.Fatalf("rotating %v: %v", p, err)
		}
		time.Sleep(700 * time.Millisecond)
	}
	before := ops.Load()
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d operations done; failures:\n%s", ops.Load(), strings.Join(errs, "\n"))
	}
	if ops.Load() == before {
		t.Errorf("no operation after the last rotation")
	}
	t.Logf("%d calls over new links while three keysets rotated, no failure", ops.Load())
}
