// Package appedge is the patent's second sub-cloud: the second replica
// unit (replicas of some apps) in front of the cloud. A hit runs here; a
// miss falls through to the cloud over link B; an app missed often
// enough is pulled in, under a size cap with least-recently-used eviction.
package appedge

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

// DefaultCapBytes is the size cap of the replicas that are not pinned.
const DefaultCapBytes = 256 << 20

// Config is an app edge's place, ports, parent and replica policy.
type Config struct {
	Name   string // "appedge/g1"
	Ports  tier.Ports
	Parent tier.Parent
	// Data holds apps/ (the replicas) and wasm-cache/.
	Data string
	// Pinned apps are always held.
	Pinned []string
	// CapBytes caps the replicas that are not pinned (DefaultCapBytes if
	// zero).
	CapBytes  int64
	PullAfter int
	Refresh   time.Duration
	Limits    wasm.Limits
	// WasmCache is the directory of compiled modules (Data/wasm-cache if
	// empty); tiers on one machine may share it.
	WasmCache   string
	CallTimeout time.Duration
	Log         *slog.Logger
}

// Start opens the replicas, mounts the parent and serves.
func Start(ctx context.Context, cfg Config) (*tier.Server, error) {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("tier", cfg.Name)
	if cfg.CapBytes == 0 {
		cfg.CapBytes = DefaultCapBytes
	}
	apps, err := repo.Open(filepath.Join(cfg.Data, "apps"), repo.Options{CapBytes: cfg.CapBytes, Log: log.With("unit", "replicas")})
	if err != nil {
		return nil, fmt.Errorf("%s: opening the replicas: %w", cfg.Name, err)
	}
	if cfg.WasmCache == "" {
		cfg.WasmCache = filepath.Join(cfg.Data, "wasm-cache")
	}
	rt, err := wasm.New(ctx, wasm.Config{CacheDir: cfg.WasmCache, Log: log.With("unit", "wasm")})
	if err != nil {
		apps.Close()
		return nil, fmt.Errorf("%s: starting the wasm runtime: %w", cfg.Name, err)
	}
	parent := cfg.Parent.Mount(log.With("unit", "parent"))
	return tier.Launch(ctx, tier.Config{
		Role: tier.AppEdge, Name: cfg.Name, Apps: apps, Runtime: rt, Limits: cfg.Limits,
		Parent: parent, ParentName: cfg.Parent.Name, CallTimeout: cfg.CallTimeout,
		PullAfter: cfg.PullAfter, Pinned: cfg.Pinned, Refresh: cfg.Refresh, Log: log,
	}, cfg.Ports, func() { apps.Close() }, func() { rt.Close(context.Background()) }, func() { parent.Close() })
}
