package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"strata/tiers/tier"
	"strata/tiers/up"
)

func upCmd(ctx context.Context, args []string) error {
	fl := flag.NewFlagSet("up", flag.ContinueOnError)
	dir := fl.String("dir", "strata-data", "`directory` of the whole hierarchy: keys, apps, stores, up.json")
	groups := fl.Int("groups", up.DefaultGroups, "number of groups (an edge and an app edge each)")
	port := fl.Int("port", up.DefaultPort, "first `port` of the layout (cloud, then 10 per group); 0 picks free ports")
	level := fl.String("log-level", "info", "log `level`: debug, info, warn, error")
	callTimeout := fl.Duration("call-timeout", tier.DefaultCallTimeout, "budget of an invocation")
	refresh := fl.Duration("refresh", tier.DefaultRefresh, "how often app edges check their replicas against the cloud")
	storeURL := fl.String("store", "", "`URL` of an object store for the edges' stores instead of the disk: s3://BUCKET/PREFIX?endpoint=HOST:PORT (group gN under PREFIX/gN)")
	lim := appLimitFlags(fl)
	if err := fl.Parse(args); err != nil {
		return err
	}
	if fl.NArg() != 0 || *groups < 1 || *groups > 99 {
		fl.Usage()
		return fmt.Errorf("up: takes no arguments; -groups is 1 to 99")
	}
	log, err := newLogger(*level)
	if err != nil {
		return err
	}
	h, err := up.Start(ctx, up.Config{Dir: *dir, Groups: *groups, Port: *port, CallTimeout: *callTimeout, Refresh: *refresh, Limits: *lim, Store: *storeURL, Log: log})
	if err != nil {
		return err
	}
	printUp(*dir, h.Manifest)
	<-ctx.Done()
	log.Info("stopping")
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	return h.Shutdown(sctx)
}

func printUp(dir string, m *up.Manifest) {
	w := os.Stdout
	fmt.Fprintf(w, "Strata is up: %d tiers, manifest in %s/%s\n\n", len(m.Tiers), dir, up.ManifestFile)
	fmt.Fprintf(w, "%-12s %-6s %-22s %s\n", "TIER", "GROUP", "ENCRYPTED", "LOCAL 9P (plain, loopback)")
	for _, e := range m.Tiers {
		fmt.Fprintf(w, "%-12s %-6s %-22s %s\n", e.Name, e.Group, e.Addr, e.Local)
	}
	fmt.Fprintf(w, "\nclients: ")
	var names []string
	for _, c := range m.Clients {
		names = append(names, c.Name)
	}
	fmt.Fprintln(w, strings.Join(names, " "))
	fmt.Fprintf(w, "\nweb page (open the link to sign in as that client):\n")
	for _, c := range m.Clients {
		fmt.Fprintf(w, "  %-8s %s\n", c.Name, c.Login)
	}
	if e, ok := m.Find("edge", ""); ok {
		_, p, _ := strings.Cut(e.Local, ":")
		if _, err := strconv.Atoi(p); err == nil {
			fmt.Fprintf(w, `
Try it (in another shell):
  echo hello | strata call -dir %[1]s upper           # HELLO, from the app edge
  strata call -dir %[1]s sha256 < README.md           # from the cloud
  strata status -dir %[1]s
  9p -a tcp!127.0.0.1!%[2]s ls apps                   # plan9port, on the edge's plain port
  diodls -s 127.0.0.1:%[2]s -a / -m 2>/dev/null || true

Stop with Ctrl-C; a restart with the same -dir keeps keys, apps and stores.
`, dir, p)
		}
	}
}
