// Package client is the patent's client tier: it shows its edge's
// namespace (the client's own /store and every app) and adds the
// detection unit and the call unit. It counts invocations per app,
// downloads an app invoked more than threshold 1 times, measures its link,
// and runs a held copy itself when the link is slower than threshold 2.
// Every way in (a FUSE mount, its local 9P port, `strata call` pointed at
// it) goes through the same tier, so every way in gets the same policy.
package client

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"strata/tiers/repo"
	"strata/tiers/tier"
	"strata/tiers/wasm"
)

// Config is a client's edge, place and thresholds.
type Config struct {
	Name string // the client's name, as its keyset names it
	// Ports: Local is the plain 9P port on loopback ("" for none).
	Ports tier.Ports
	Edge  tier.Parent
	// Data holds the downloaded apps (apps/) and wasm-cache/.
	Data string
	// PullAfter is threshold 1 (tier.DefaultClientPullAfter if zero).
	PullAfter int
	// SlowBelow is threshold 2 in bytes per second
	// (tier.DefaultSlowBelow if zero).
	SlowBelow   int64
	Refresh     time.Duration
	Limits      wasm.Limits
	CallTimeout time.Duration
	// CapBytes caps the downloaded apps (64 MiB if zero).
	CapBytes int64
	// WasmCache is the directory of compiled modules (Data/wasm-cache
	// if empty).
	WasmCache string
	Log       *slog.Logger
}

// Start opens the client's copies, mounts its edge and serves its local
// port. The Server's Tier is the client's namespace, for a FUSE mount.
func Start(ctx context.Context, cfg Config) (*tier.Server, error) {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	name := "client/" + cfg.Name
	log = log.With("tier", name)
	if cfg.CapBytes == 0 {
		cfg.CapBytes = 64 << 20
	}
	apps, err := repo.Open(filepath.Join(cfg.Data, "apps"), repo.Options{CapBytes: cfg.CapBytes, Log: log.With("unit", "copies")})
	if err != nil {
		return nil, fmt.Errorf("%s: opening the downloaded apps: %w", name, err)
	}
	if cfg.WasmCache == "" {
		cfg.WasmCache = filepath.Join(cfg.Data, "wasm-cache")
	}
	rt, err := wasm.New(ctx, wasm.Config{CacheDir: cfg.WasmCache, Log: log.With("unit", "wasm")})
	if err != nil {
		apps.Close()
		return nil, fmt.Errorf("%s: starting the wasm runtime: %w", name, err)
	}
	edge := cfg.Edge.Mount(log.With("unit", "edge"))
	return tier.Launch(ctx, tier.Config{
		Role: tier.Client, Name: name, Apps: apps, Runtime: rt, Limits: cfg.Limits,
		Parent: edge, ParentName: cfg.Edge.Name, CallTimeout: cfg.CallTimeout,
		PullAfter: cfg.PullAfter, SlowBelow: cfg.SlowBelow, Refresh: cfg.Refresh, Log: log,
	}, cfg.Ports, func() { apps.Close() }, func() { rt.Close(context.Background()) }, func() { edge.Close() })
}
