// Package cloud is the patent's cloud end: the application unit (every
// app), the first replica unit (a backup copy of every app, checked by
// content hash) and the base unit that runs them. It has no parent.
//
// The apps live on the local disk, or on an object store (Config.Store),
// where several cloud nodes serve the same apps: each deploy at one node is
// served by every node (package repo says within what bound), and app
// edges given all the nodes' addresses go on through another when theirs
// fails.
package cloud

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"strata/tiers/repo"
	"strata/tiers/tier"
	"strata/tiers/wasm"
)

// DefaultRefresh is how often a cloud on an object store checks for the
// deploys of other nodes when Config.Refresh is zero.
const DefaultRefresh = repo.DefaultRefresh

// Config is a cloud's place, ports and limits.
type Config struct {
	Name  string // "cloud" if empty
	Ports tier.Ports
	// Data holds apps/ (the primary copies), backup/ and wasm-cache/;
	// with Store, only wasm-cache/ and the apps' limits.
	Data string
	// Store, if set, is the store URL of an object store that holds the
	// apps instead of Data (s3://BUCKET/PREFIX?endpoint=HOST:PORT&...,
	// see repo.OpenURL). Every cloud node given the same Store serves the
	// same apps: a deploy at one is served by the others (see package
	// repo on object stores). BackupStore is the backup copy's URL;
	// repo.DefaultBackupURL(Store) if empty.
	Store       string
	BackupStore string
	// Refresh is how often a cloud on Store checks for the deploys of
	// other nodes (repo.DefaultRefresh if zero).
	Refresh time.Duration
	Limits  wasm.Limits
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
	// Apps deployed at other nodes on the same store are compiled when
	// they arrive, as this node's own deploys are, so that a first call
	// here does not pay for it.
	arrived := make(chan []repo.App, 64)
	apps, err := openApps(ctx, cfg, log.With("unit", "apps"), func(a []repo.App) {
		select {
		case arrived <- a:
		default: // compiled at its first call instead
		}
	})
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
	wctx, stopWarm := context.WithCancel(context.Background())
	warmed := make(chan struct{})
	go warm(wctx, apps, rt, arrived, log, warmed)
	return tier.Launch(ctx, tier.Config{
		Role: tier.Cloud, Name: cfg.Name, Apps: apps, Runtime: rt, Limits: cfg.Limits,
		LimitsFile: filepath.Join(cfg.Data, "limits.json"), CallTimeout: cfg.CallTimeout, Log: log,
	}, cfg.Ports, func() { apps.Close() }, func() { rt.Close(context.Background()) }, func() { stopWarm(); <-warmed })
}

// warm compiles the apps that arrive from other nodes, until ctx ends.
func warm(ctx context.Context, apps *repo.Repo, rt *wasm.Runtime, arrived <-chan []repo.App, log *slog.Logger, done chan<- struct{}) {
	defer close(done)
	for {
		var batch []repo.App
		select {
		case <-ctx.Done():
			return
		case batch = <-arrived:
		}
		for _, a := range batch {
			got, err := apps.Get(ctx, a.ID)
			if err == nil {
				err = rt.Compile(ctx, got.Module, got.Hash)
			}
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				log.Warn("compiling an app deployed at another node failed", "app", a.ID, "err", err)
				continue
			}
			log.Info("compiled an app deployed at another node", "app", a.ID, "version", got.Version)
		}
	}
}

// openTimeout bounds the opening of apps on an object store.
const openTimeout = time.Minute

// openApps opens the application unit and its backup: in Data, or on the
// object store.
func openApps(ctx context.Context, cfg Config, log *slog.Logger, arrived func([]repo.App)) (*repo.Repo, error) {
	if cfg.Store == "" {
		return repo.Open(filepath.Join(cfg.Data, "apps"), repo.Options{Backup: filepath.Join(cfg.Data, "backup"), Log: log})
	}
	if err := os.MkdirAll(cfg.Data, 0o755); err != nil {
		return nil, err
	}
	backup := cfg.BackupStore
	if backup == "" {
		var err error
		if backup, err = repo.DefaultBackupURL(cfg.Store); err != nil {
			return nil, err
		}
	}
	octx, cancel := context.WithTimeout(ctx, openTimeout)
	defer cancel()
	return repo.OpenURL(octx, cfg.Store, repo.Options{Backup: backup, Refresh: cfg.Refresh, Arrived: arrived, Log: log})
}
