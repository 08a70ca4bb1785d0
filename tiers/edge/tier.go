package edge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"strata/fs"
	"strata/fs/objstore"
	"strata/fs/store"
	"strata/tiers/tier"
	"strata/tiers/web"
)

// Config is an edge's place, ports and parent.
type Config struct {
	Name   string // "edge/g1"
	Ports  tier.Ports
	Parent tier.Parent
	// Data holds store/, one directory per client, on the local disk;
	// with an object store, the staging of writes.
	Data string
	// Store, if not empty, is the URL of an object store that holds the
	// store instead (s3://BUCKET/PREFIX?endpoint=HOST:PORT, see
	// objstore.ParseURL): the edges of a group given one URL serve the
	// same files.
	Store       string
	CallTimeout time.Duration
	Log         *slog.Logger
}

// openStore opens the edge's store: the local disk's, or an object
// store's. close releases it.
func openStore(ctx context.Context, cfg Config, log *slog.Logger) (root fs.Dir, close func(), err error) {
	if cfg.Store == "" {
		st, err := store.Open(filepath.Join(cfg.Data, "store"), log)
		if err != nil {
			return nil, nil, err
		}
		return st.Root(), func() { st.Close() }, nil
	}
	ocfg, err := objstore.ParseURL(cfg.Store)
	if err != nil {
		return nil, nil, err
	}
	ocfg.StagingDir = filepath.Join(cfg.Data, "staging")
	ocfg.Log = log
	st, err := objstore.Open(ctx, ocfg)
	if err != nil {
		return nil, nil, err
	}
	return st.Root(), func() { st.Close() }, nil
}

// Start opens the store, mounts the parent and serves. Each client sees
// its own directory of the store as /store; the plain local port's
// sessions are the client "local".
func Start(ctx context.Context, cfg Config) (*tier.Server, error) {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("tier", cfg.Name)
	root, closeStore, err := openStore(ctx, cfg, log.With("unit", "store"))
	if err != nil {
		return nil, fmt.Errorf("%s: opening the store: %w", cfg.Name, err)
	}
	parent := cfg.Parent.Mount(log.With("unit", "parent"))
	return tier.Launch(ctx, tier.Config{
		Role: tier.Edge, Name: cfg.Name, Parent: parent, ParentName: cfg.Parent.Name,
		Store:       func(ctx context.Context, peer string) (fs.Dir, error) { return clientStore(ctx, root, peer) },
		CallTimeout: cfg.CallTimeout, Log: log,
	}, cfg.Ports, closeStore, func() { parent.Close() })
}

// clientStore is the directory of the store that peer sees, made on first
// use.
func clientStore(ctx context.Context, root fs.Dir, peer string) (fs.Dir, error) {
	if err := fs.CheckName("attach", peer); err != nil {
		return nil, err
	}
	n, err := root.Lookup(ctx, peer)
	if fs.KindOf(err) == fs.NotExist {
		d, err := root.Mkdir(ctx, peer, 0o755)
		if fs.KindOf(err) == fs.Exist {
			n, err = root.Lookup(ctx, peer)
		} else if err == nil {
			return d, nil
		}
		if err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, err
	}
	d, ok := n.(fs.Dir)
	if !ok {
		return nil, &fs.Error{Op: "attach", Path: peer, Kind: fs.NotDir, Err: errors.New("the client's store is not a directory")}
	}
	return d, nil
}

// Web serves the web front end of the edge that srv serves: the page and
// its API over each client's namespace. It stops when srv shuts down.
func Web(ctx context.Context, srv *tier.Server, cfg web.Config, l web.Listen) (*web.HTTPServer, error) {
	t := srv.Tier()
	cfg.Tier = t.Name()
	cfg.Root = t.Root
	if cfg.Log != nil {
		cfg.Log = cfg.Log.With("tier", t.Name(), "unit", "web")
	}
	h, err := web.New(cfg)
	if err != nil {
		return nil, err
	}
	hs, err := web.Serve(ctx, l, h, cfg.Log)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t.Name(), err)
	}
	srv.OnShutdown(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		hs.Shutdown(sctx)
	})
	return hs, nil
}
