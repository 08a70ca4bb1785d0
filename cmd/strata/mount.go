package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"strata/mount/fuse"
	"strata/mount/link"
	"strata/tiers/client"
	"strata/tiers/keyring"
	"strata/tiers/tier"
)

func mountCmd(ctx context.Context, args []string) error {
	fl := flag.NewFlagSet("mount", flag.ContinueOnError)
	edge := fl.String("edge", "127.0.0.1:5652", "`addresses` of the edge's encrypted port, comma-separated for the several edges of a group (tried in turn)")
	edgeName := fl.String("edge-name", "edge", "`name` of the edge in errors and logs")
	key := fl.String("key", "", "the client's keyset `file` (KEYS/clients/NAME.keyset; NAME is the client's name)")
	kek := fl.String("kek", "", "the key-encryption key `file` (default: kek.json beside the clients directory)")
	data := fl.String("data", "", "`directory` for downloaded apps (default: the user cache directory)")
	local := fl.String("local", "127.0.0.1:5660", "TCP `address` of the plain 9P port on loopback for local tools; empty for none")
	threshold1 := fl.Int("threshold1", tier.DefaultClientPullAfter, "an app invoked more than this many times is downloaded")
	threshold2 := fl.Int64("threshold2", tier.DefaultSlowBelow, "link speed in `bytes/s` below which a held copy runs here")
	refresh := fl.Duration("refresh", tier.DefaultRefresh, "how often downloaded apps are checked against the edge")
	timeout := fl.Duration("timeout", 0, "bound of each step on the link to the edge (0: default)")
	callTimeout := fl.Duration("call-timeout", tier.DefaultCallTimeout, "budget of an invocation")
	level := fl.String("log-level", "info", "log `level`: debug, info, warn, error")
	lim := appLimitFlags(fl)
	fl.Usage = func() {
		fmt.Fprintln(fl.Output(), "usage: strata mount -edge ADDR -key FILE [flags] MOUNTPOINT")
		fl.PrintDefaults()
	}
	if err := fl.Parse(args); err != nil {
		return err
	}
	if fl.NArg() != 1 || *key == "" {
		fl.Usage()
		return fmt.Errorf("mount: -key FILE and one MOUNTPOINT are required")
	}
	mountpoint := fl.Arg(0)
	name := strings.TrimSuffix(filepath.Base(*key), ".keyset")
	if err := keyring.CheckName("client", name); err != nil {
		return fmt.Errorf("mount: the keyset file's name %s does not name a client: %w", filepath.Base(*key), err)
	}
	if *kek == "" {
		*kek = filepath.Join(filepath.Dir(filepath.Dir(*key)), keyring.KEKFile)
	}
	if *data == "" {
		dir, err := os.UserCacheDir()
		if err != nil {
			return fmt.Errorf("mount: no -data and no cache directory: %w", err)
		}
		*data = filepath.Join(dir, "strata", name)
	}
	log, err := newLogger(*level)
	if err != nil {
		return err
	}
	kekAEAD, err := link.LoadKEK(*kek)
	if err != nil {
		return fmt.Errorf("mount: %w", err)
	}
	purpose := keyring.Client(name)
	keys, err := keyring.FileKeys(*key, kekAEAD, purpose, log.With("unit", "keys"))
	if err != nil {
		return fmt.Errorf("mount: %w", err)
	}
	lcfg := link.Config{Name: name, Method: purpose.Method(), Keys: keys}
	if err := fuse.CleanStale(mountpoint); err != nil {
		return fmt.Errorf("mount: %w", err)
	}
	s, err := client.Start(ctx, client.Config{
		Name:  name,
		Ports: tier.Ports{Local: *local},
		Edge: tier.Parent{Name: *edgeName, Addr: *edge, Timeout: *timeout,
			Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return link.Dial(ctx, network, addr, lcfg)
			}},
		Data: *data, PullAfter: *threshold1, SlowBelow: *threshold2, Refresh: *refresh,
		Limits: *lim, CallTimeout: *callTimeout, Log: log,
	})
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		s.Shutdown(sctx)
	}()
	root, err := s.Tier().Root(ctx, name)
	if err != nil {
		return err
	}
	m, err := fuse.Mount(ctx, root, mountpoint, fuse.Options{Log: log.With("unit", "fuse")})
	if err != nil {
		return err
	}
	log.Info("mounted", "client", name, "edge", *edge, "mountpoint", m.Mountpoint(), "local", s.Local())
	unmounted := make(chan struct{})
	go func() { m.Wait(); close(unmounted) }()
	select {
	case <-ctx.Done():
		log.Info("unmounting", "mountpoint", m.Mountpoint())
		if err := m.Unmount(); err != nil {
			return fmt.Errorf("mount: unmounting %s: %w", m.Mountpoint(), err)
		}
	case <-unmounted:
		log.Info("unmounted from outside", "mountpoint", m.Mountpoint())
	}
	return nil
}
