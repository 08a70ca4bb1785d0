package main

import (
	"context"
	"flag"
	"fmt"
	"time"

	"strata/tiers/edge"
)

func serve(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("serve: which tier? (cloud, appedge, edge or store)")
	}
	switch args[0] {
	case "cloud":
		return serveCloud(ctx, args[1:])
	case "appedge":
		return serveAppEdge(ctx, args[1:])
	case "edge":
		return serveEdge(ctx, args[1:])
	case "store":
		return serveStore(ctx, args[1:])
	}
	return fmt.Errorf("serve: unknown tier %q (want cloud, appedge, edge or store)", args[0])
}

func serveStore(ctx context.Context, args []string) error {
	fl := flag.NewFlagSet("serve store", flag.ContinueOnError)
	listen := fl.String("listen", "127.0.0.1:5640", "TCP `address` of the 9P port (9P2000.L and 9P2000)")
	data := fl.String("data", "", "`directory` that holds the store (created if missing)")
	public := fl.Bool("public", false, "allow a non-loopback address and peers (the port has no encryption or authentication)")
	level := fl.String("log-level", "info", "log `level`: debug, info, warn, error")
	grace := fl.Duration("shutdown-timeout", 5*time.Second, "how long to wait for connections at shutdown")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if *data == "" || fl.NArg() != 0 {
		fl.Usage()
		return fmt.Errorf("serve store: -data DIR is required and no arguments are taken")
	}
	log, err := newLogger(*level)
	if err != nil {
		return err
	}
	s, err := edge.StartStore(ctx, edge.StoreConfig{Listen: *listen, Data: *data, Public: *public}, log)
	if err != nil {
		return err
	}
	werr := s.Wait(ctx)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), *grace)
	defer cancel()
	if err := s.Shutdown(sctx); err != nil && werr == nil {
		werr = err
	}
	return werr
}
