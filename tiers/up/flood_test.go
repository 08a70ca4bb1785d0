package up

import (
	"bytes"
	"context"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"strata/mount/remote"
	"strata/tiers/call"
	"strata/tiers/keyring"
	"strata/tiers/tier"
	"strata/tiers/wasm"
)

var recordedKiB = regexp.MustCompile(`(?m)^recorded-kib (\d+)$`)

// TestCtlFlood: one client floods its edge with invocations whose answers
// are large, many at once on one link, far more answer bytes than any tier
// records. Every call is answered correctly, and each tier's record of
// replies stays within its byte budget (call.DefaultRecordBytes), so the
// flood's memory is bounded by the caps and not by its length.
func TestCtlFlood(t *testing.T) {
	calls, workers, size := 600, 60, 192<<10 // 112 MiB of answers
	if testing.Short() || raceEnabled {
		calls, workers, size = 280, 40, 256<<10 // 70 MiB
	}
	h := start(t, Config{Limits: wasm.Limits{Timeout: time.Minute}, CallTimeout: time.Minute})
	g := h.Groups[0]
	c := g.Clients[0]
	ctx := context.Background()
	tr, err := remote.Dial(ctx, "tcp", g.Edge.Addr(), remote.Options{Dial: h.Keys.Dial(c, keyring.Client(c))})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()

	input := bytes.Repeat([]byte("flood "), size/6)
	want := bytes.ToUpper(input)
	var next, failed atomic.Int64
	var wg sync.WaitGroup
	var errOnce sync.Once
	deadline := time.Now().Add(3 * time.Minute)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(calls) && time.Now().Before(deadline) {
				r, err := tier.Forward(ctx, tr, &call.Request{ID: call.NewID(call.KindApp, "upper"), App: "upper", Input: input, Budget: time.Minute})
				if err != nil || !r.OK || !bytes.Equal(r.Out, want) {
					failed.Add(1)
					errOnce.Do(func() {
						reason := ""
						if r != nil {
							reason = r.Reason
						}
						t.Errorf("a call failed: %v %s", err, reason)
					})
				}
			}
		}()
	}
	wg.Wait()
	if n := next.Load(); n <= int64(calls) {
		t.Fatalf("only %d of %d calls were made within the bound", n-1, calls)
	}

	status := read9(t, fsys9(t, g.Edge.Local()), "status")
	ss := sectionsOf(t, status)
	budget := int64(call.DefaultRecordBytes >> 10)
	for _, s := range ss[:2] { // the edge and the app edge: upper runs there
		m := recordedKiB.FindStringSubmatch(s.body)
		if m == nil {
			t.Fatalf("section %s has no recorded-kib line:\n%s", s.name, status)
		}
		kib, _ := strconv.ParseInt(m[1], 10, 64)
		if kib > budget {
			t.Errorf("%s records %d KiB of replies, over its budget of %d KiB", s.name, kib, budget)
		}
		if kib < budget/2 {
			t.Errorf("%s records %d KiB: the flood did not fill the record (the test proves nothing)", s.name, kib)
		}
		t.Logf("%s: %s KiB of replies recorded after %d calls of %d KiB answers", s.name, m[1], calls, size>>10)
	}
	if f := failed.Load(); f > 0 {
		t.Errorf("%d of %d calls failed", f, calls)
	}
}
