package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sort"
	"time"

	"strata/mount/shape"
	"strata/tiers/apps"
)

// delayCmd runs a delay line: a TCP proxy that holds each direction's
// bytes for a fixed time and can limit their rate.
func delayCmd(ctx context.Context, args []string) error {
	fl := flag.NewFlagSet("delay", flag.ContinueOnError)
	listen := fl.String("listen", "127.0.0.1:5700", "TCP `address` to accept on")
	to := fl.String("to", "", "TCP `address` to connect each connection to")
	delay := fl.Duration("delay", 10*time.Millisecond, "one-way delay, each direction (a round trip takes twice this)")
	rate := fl.Int64("rate", 0, "limit of each direction in `bytes/s` (0: none)")
	life := fl.Duration("for", 0, "stop after this long (0: at SIGINT or SIGTERM)")
	level := fl.String("log-level", "info", "log `level`: debug, info, warn, error")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if *to == "" || fl.NArg() != 0 {
		fl.Usage()
		return fmt.Errorf("delay: -to ADDR is required and no arguments are taken")
	}
	log, err := newLogger(*level)
	if err != nil {
		return err
	}
	if *life > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *life)
		defer cancel()
	}
	p, err := shape.Start(ctx, shape.Config{Listen: *listen, Target: *to, Delay: *delay, Rate: *rate, Log: log})
	if err != nil {
		return err
	}
	<-ctx.Done()
	return p.Close()
}

// appsCmd builds the sample apps for wasip1 into a directory, one
// APP.wasm each, for `strata deploy`.
func appsCmd(ctx context.Context, args []string) error {
	fl := flag.NewFlagSet("apps", flag.ContinueOnError)
	out := fl.String("o", "strata-apps", "`directory` to build the sample apps into")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if fl.NArg() != 0 {
		fl.Usage()
		return fmt.Errorf("apps: takes no arguments")
	}
	paths, err := apps.BuildAll(ctx, *out)
	if err != nil {
		return err
	}
	names := make([]string, 0, len(paths))
	for n := range paths {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(os.Stdout, "%s %s\n", n, paths[n])
	}
	return nil
}
