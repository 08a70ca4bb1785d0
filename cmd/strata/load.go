package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"strata/mount/link"
	"strata/mount/remote"
	"strata/tiers/call"
	"strata/tiers/keyring"
	"strata/tiers/repo"
	"strata/tiers/tier"
)

// loadCmd invokes apps a bounded number of times, for a bounded time, and
// prints the latency distribution and where the calls ran: the claims of
// the patent measured from a client.
func loadCmd(ctx context.Context, args []string) error {
	fl := flag.NewFlagSet("load", flag.ContinueOnError)
	addr := fl.String("addr", "", "plain 9P `address` of a tier to invoke through (a client's -local port, an edge's plain port)")
	edge := fl.String("edge", "", "`address` of an edge's encrypted port, with -key")
	key := fl.String("key", "", "the client's keyset `file`, with -edge")
	appList := fl.String("apps", "upper", "comma-separated `apps` to invoke")
	zipf := fl.Float64("zipf", 0, "pick apps with a Zipf law of this exponent (> 1) in the order given; 0 picks them in turn")
	n := fl.Int("n", 200, "number of calls")
	conc := fl.Int("c", 1, "calls at once")
	size := fl.Int("input-bytes", 100, "input size of each call")
	limit := fl.Duration("for", 5*time.Minute, "stop after this long, whatever the count")
	budget := fl.Duration("call-timeout", tier.DefaultCallTimeout, "budget of one call")
	seed := fl.Uint64("seed", 1, "seed of the app choice")
	fl.Usage = func() {
		fmt.Fprintln(fl.Output(), "usage: strata load (-addr ADDR | -edge ADDR -key FILE) [-apps a,b] [-zipf S] [-n 200] [-c 1] [-input-bytes 100]")
		fl.PrintDefaults()
	}
	if err := fl.Parse(args); err != nil {
		return err
	}
	if fl.NArg() != 0 || (*addr == "") == (*edge == "") || (*edge != "") != (*key != "") || *n < 1 || *conc < 1 || *size < 0 {
		fl.Usage()
		return fmt.Errorf("load: give -addr, or -edge with -key; -n and -c are at least 1")
	}
	if *zipf != 0 && *zipf <= 1 {
		return fmt.Errorf("load: -zipf is an exponent above 1")
	}
	apps := strings.Split(*appList, ",")
	for _, a := range apps {
		if err := repo.ValidID(a); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, *limit)
	defer cancel()
	opts := remote.Options{Name: "tier", Timeout: 10 * time.Second}
	target := *addr
	if *edge != "" {
		dial, err := clientDial(*key)
		if err != nil {
			return fmt.Errorf("load: %w", err)
		}
		opts.Name, opts.Dial, target = "edge", dial, *edge
	}
	tree, err := remote.Dial(ctx, "tcp", target, opts)
	if err != nil {
		return fmt.Errorf("load: %w", err)
	}
	defer tree.Close()

	pick := func(r *rand.Rand) string { return apps[r.IntN(len(apps))] }
	if *zipf > 1 {
		// rand/v2 has no Zipf: draw from the cumulative weights 1/k^s.
		cum := make([]float64, len(apps))
		total := 0.0
		for i := range apps {
			total += 1 / math.Pow(float64(i+1), *zipf)
			cum[i] = total
		}
		pick = func(r *rand.Rand) string {
			x := r.Float64() * total
			return apps[sort.SearchFloat64s(cum, x)]
		}
	} else if len(apps) > 1 {
		var mu sync.Mutex
		next := 0
		pick = func(*rand.Rand) string {
			mu.Lock()
			defer mu.Unlock()
			a := apps[next%len(apps)]
			next++
			return a
		}
	}
	input := bytes.Repeat([]byte("strata "), *size/7+1)[:*size]

	type result struct {
		d     time.Duration
		where string
		err   string
	}
	results := make([]result, 0, *n)
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		left = *n
	)
	start := time.Now()
	for w := 0; w < *conc; w++ {
		r := rand.New(rand.NewPCG(*seed, uint64(w)))
		wg.Go(func() {
			for {
				mu.Lock()
				if left == 0 || ctx.Err() != nil {
					mu.Unlock()
					return
				}
				left--
				mu.Unlock()
				app := pick(r)
				cctx, ccancel := context.WithTimeout(ctx, *budget)
				t0 := time.Now()
				rep, err := tier.Forward(cctx, tree, &call.Request{ID: call.NewID(call.KindApp, app), App: app, Input: input})
				d := time.Since(t0)
				ccancel()
				res := result{d: d}
				switch {
				case err != nil:
					res.err = call.OneLine(err.Error())
				case !rep.OK:
					res.where, res.err = rep.Where, call.OneLine(rep.Reason)
				default:
					res.where = rep.Where
				}
				mu.Lock()
				results = append(results, res)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	took := time.Since(start)

	var lat []time.Duration
	where := map[string]int{}
	failures := map[string]int{}
	for _, r := range results {
		if r.err != "" {
			failures[r.err]++
			continue
		}
		lat = append(lat, r.d)
		where[r.where]++
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	q := func(p float64) string {
		if len(lat) == 0 {
			return "-"
		}
		i := int(math.Ceil(p*float64(len(lat)))) - 1
		return fmt.Sprintf("%.2fms", float64(lat[max(i, 0)].Microseconds())/1000)
	}
	fmt.Printf("calls %d ok %d failed %d in %s (%.1f/s)\n", len(results), len(lat), len(results)-len(lat), took.Round(time.Millisecond), float64(len(results))/took.Seconds())
	fmt.Printf("latency p50 %s p90 %s p99 %s max %s\n", q(0.5), q(0.9), q(0.99), q(1))
	for _, w := range sortedCounts(where) {
		fmt.Printf("where %s %d\n", w, where[w])
	}
	for _, f := range sortedCounts(failures) {
		fmt.Printf("failure %dx: %s\n", failures[f], f)
	}
	if len(lat) == 0 {
		return fmt.Errorf("load: every call failed")
	}
	return nil
}

func sortedCounts(m map[string]int) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// clientDial is the encrypted client link of the client whose keyset is
// the file key (its KEK beside the clients directory).
func clientDial(key string) (func(ctx context.Context, network, addr string) (net.Conn, error), error) {
	name := strings.TrimSuffix(filepath.Base(key), ".keyset")
	if err := keyring.CheckName("client", name); err != nil {
		return nil, fmt.Errorf("the keyset file's name %s does not name a client: %w", filepath.Base(key), err)
	}
	kek, err := link.LoadKEK(filepath.Join(filepath.Dir(filepath.Dir(key)), keyring.KEKFile))
	if err != nil {
		return nil, err
	}
	purpose := keyring.Client(name)
	keys, err := keyring.FileKeys(key, kek, purpose, nil)
	if err != nil {
		return nil, err
	}
	cfg := link.Config{Name: name, Method: purpose.Method(), Keys: keys}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		return link.Dial(ctx, network, addr, cfg)
	}, nil
}
