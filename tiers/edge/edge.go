// Package edge is the patent's first sub-cloud: the tier that holds the data
// storage unit (/store), one directory per client, and sends every app
// request up to its app edge. StartStore serves the store alone.
package edge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"strata/fs/ninep"
	"strata/fs/store"
	"strata/tiers/tier"
)

// StoreConfig says where the store lives and where it is served.
type StoreConfig struct {
	Listen string // TCP address of the 9P port, both dialects
	Data   string // directory that holds the store
	// Public allows the port on a non-loopback address, and peers that
	// are not on loopback: the port has no encryption or authentication.
	Public bool
	// ShutdownTimeout bounds the wait for open connections at shutdown.
	ShutdownTimeout time.Duration
}

// StoreServer is a running store server.
type StoreServer struct {
	st   *store.Store
	srv  *ninep.Server
	ln   net.Listener
	log  *slog.Logger
	done chan error
}

// StartStore opens the store and starts serving it. It returns once the
// port is listening.
func StartStore(ctx context.Context, cfg StoreConfig, log *slog.Logger) (*StoreServer, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if !cfg.Public {
		if err := tier.CheckLoopback(cfg.Listen); err != nil {
			return nil, fmt.Errorf("edge: %w", err)
		}
	}
	st, err := store.Open(cfg.Data, log.With("unit", "store"))
	if err != nil {
		return nil, fmt.Errorf("edge: opening the store in %s: %w", cfg.Data, err)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", cfg.Listen)
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("edge: listening on %s: %w", cfg.Listen, err)
	}
	if !cfg.Public {
		ln = tier.LoopbackOnly(ln, log)
	}
	s := &StoreServer{
		st:   st,
		srv:  ninep.NewServer(st.Root(), log.With("unit", "9p")),
		ln:   ln,
		log:  log,
		done: make(chan error, 1),
	}
	log.Info("serving the store", "listen", ln.Addr().String(), "data", cfg.Data)
	go func() { s.done <- s.srv.Serve(context.WithoutCancel(ctx), ln) }()
	return s, nil
}

// Addr is the address the 9P port listens on.
func (s *StoreServer) Addr() net.Addr { return s.ln.Addr() }

// Wait blocks until the server stops on its own (its listener failed) or
// ctx ends.
func (s *StoreServer) Wait(ctx context.Context) error {
	select {
	case err := <-s.done:
		if errors.Is(err, ninep.ErrServerClosed) {
			return nil
		}
		return err
	case <-ctx.Done():
		return nil
	}
}

// Shutdown stops accepting, closes the connections, waits for them up to
// ctx's deadline and closes the store.
func (s *StoreServer) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if cerr := s.st.Close(); err == nil {
		err = cerr
	}
	s.log.Info("store server stopped", "err", err)
	return err
}
