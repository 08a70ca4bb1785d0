package up

import (
	"bytes"
	"context"
	"slices"
	"testing"
	"time"

	"strata/mount/remote"
	"strata/tiers/call"
	"strata/tiers/keyring"
	"strata/tiers/tier"
	"strata/tiers/wasm"
)

// Invocation latency of upper on a 100-byte input: the in-process wazero
// run (the floor), an app-edge hit through the edge, and a cloud
// fall-through through the edge. Calls go in over the edge's encrypted
// client port, as a client's would. Each reports its median and p99.
//
//	go test -run '^$' -bench BenchmarkInvoke -benchtime 200x ./tiers/up/
func BenchmarkInvoke(b *testing.B) {
	input := bytes.Repeat([]byte("strata! "), 13)[:100]
	want := bytes.ToUpper(input)
	mods := map[string][]byte{"upper": modules["upper"], "upperc": modules["upper"]}
	h := start(b, Config{Modules: mods, PullAfter: -1})

	b.Run("floor", func(b *testing.B) {
		ctx := context.Background()
		rt, err := wasm.New(ctx, wasm.Config{CacheDir: wasmCache})
		if err != nil {
			b.Fatal(err)
		}
		defer rt.Close(ctx)
		mod := modules["upper"]
		hash := wasm.Hash(mod)
		if err := rt.Compile(ctx, mod, hash); err != nil {
			b.Fatal(err)
		}
		measure(b, func() {
			res, err := rt.Run(ctx, mod, hash, input, wasm.Limits{})
			if err != nil || !bytes.Equal(res.Stdout, want) {
				b.Fatalf("%q %v", res.Stdout, err)
			}
		})
	})

	c := h.Groups[0].Clients[0]
	// The message size a client tier asks for (tier.ParentMsize).
	tree, err := remote.Dial(context.Background(), "tcp", h.Groups[0].Edge.Addr(), remote.Options{Dial: h.Keys.Dial(c, keyring.Client(c)), Msize: tier.ParentMsize})
	if err != nil {
		b.Fatal(err)
	}
	defer tree.Close()
	for _, bc := range []struct{ name, app, where string }{
		{"appedge-hit", "upper", "appedge/g1"},
		{"cloud", "upperc", "cloud"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			measure(b, func() {
				req := &call.Request{ID: call.NewID(call.KindApp, bc.app), App: bc.app, Input: input, Budget: 10 * time.Second}
				r, err := tier.Forward(context.Background(), tree, req)
				if err != nil || !r.OK || !bytes.Equal(r.Out, want) || r.Where != bc.where {
					b.Fatalf("%+v %v", r, err)
				}
			})
		})
	}
}

// measure runs fn b.N times after a warm-up and reports the median and
// the 99th percentile.
func measure(b *testing.B, fn func()) {
	for range 3 {
		fn()
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		fn()
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[min(len(lat)-1, len(lat)*99/100)].Microseconds()), "p99-µs")
}
