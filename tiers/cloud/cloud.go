// Package cloud is the patent's cloud end: the application unit (every
// app), the first replica unit (a backup copy of every app, checked by
// content hash) and the base unit that runs them. It has no parent.
package cloud

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

// Config is a cloud's place, ports and limits.
type Config struct {
	Name  string // "cloud" if empty
	Ports tier.Ports
	// Data holds apps/ (the primary copies), backup/ and wasm-cache/.
	Data   string
	Limits wasm.Limits
	// WasmCache is the directory of compiled modules (Data/wasm-cache if
	// empty); tiers on one machine may share it.
	WasmCache   string
	CallTimeout time.Duration
	Log         *slog.Logger
}

// Start opens the cloud's apps and serves them.
func Start(ctx context.Context, cfg Config) (*tier.Server, error) {
	if cfg.Name == "" {
		cfg.Name = "cloud"
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("tier", cfg.Name)
	apps, err := repo.Open(filepath.Join(cfg.Data, "apps"), repo.Options{Backup: filepath.Join(cfg.Data, "backup"), Log: log.With("unit", "apps")})
	if err != nil {
		return nil, fmt.Errorf("%s: opening the apps: %w", cfg.Name, err)
	}
	if cfg.WasmCache == "" {
		cfg.WasmCache = filepath.Join(cfg.Data, "wasm-cache")
	}
	rt, err := wasm.New(ctx, wasm.Config{CacheDir: cfg.WasmCache, Log: log.With("unit", "wasm")})
	if err != nil {
		apps.Close()
		return nil, fmt.Errorf("%s: starting the wasm runtime: %w", cfg.Name, err)
	}
	return tier.Launch(ctx, tier.Config{
		Role: tier.Cloud, Name: cfg.Name, Apps: apps, Runtime: rt, Limits: cfg.Limits,
		LimitsFile: filepath.Join(cfg.Data, "limits.json"), CallTimeout: cfg.CallTimeout, Log: log,
	}, cfg.Ports, func() { apps.Close() }, func() { rt.Close(context.Background()) })
}
