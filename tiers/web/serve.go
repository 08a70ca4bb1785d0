package web

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Listen says where and how the web front end is served.
type Listen struct {
	Addr string // TCP address
	// CertFile and KeyFile turn on HTTPS.
	CertFile, KeyFile string
	// Public allows plain HTTP on an address that is not loopback.
	Public bool
}

// HTTPServer is a running web front end.
type HTTPServer struct {
	srv  *http.Server
	ln   net.Listener
	url  string
	errc chan error
}

// Serve serves h as l says. Plain HTTP is refused on an address that is
// not loopback unless l.Public: tokens would cross the network in clear.
func Serve(ctx context.Context, l Listen, h http.Handler, log *slog.Logger) (*HTTPServer, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	tlsOn := l.CertFile != "" || l.KeyFile != ""
	var cfg *tls.Config
	if tlsOn {
		cert, err := tls.LoadX509KeyPair(l.CertFile, l.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("web: loading the certificate %s and key %s: %w", l.CertFile, l.KeyFile, err)
		}
		cfg = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	} else if !l.Public {
		if err := checkLoopback(l.Addr); err != nil {
			return nil, err
		}
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", l.Addr)
	if err != nil {
		return nil, fmt.Errorf("web: listening on %s: %w", l.Addr, err)
	}
	scheme := "http"
	if tlsOn {
		ln = tls.NewListener(ln, cfg)
		scheme = "https"
	}
	s := &HTTPServer{
		srv: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       2 * time.Minute,
			MaxHeaderBytes:    64 << 10,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		},
		ln:   ln,
		url:  scheme + "://" + ln.Addr().String() + "/",
		errc: make(chan error, 1),
	}
	go func() { s.errc <- s.srv.Serve(ln) }()
	log.Info("serving the web page", "url", s.url)
	return s, nil
}

func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("web: bad address %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host == "localhost" || ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("web: %s is not a loopback address and no certificate was given: tokens would cross the network in clear (give a certificate and key for HTTPS, or allow plain HTTP explicitly)", addr)
}

// URL is the page's address.
func (s *HTTPServer) URL() string { return s.url }

// Addr is the address listened on.
func (s *HTTPServer) Addr() string { return s.ln.Addr().String() }

// Wait blocks until the server fails or ctx ends.
func (s *HTTPServer) Wait(ctx context.Context) error {
	select {
	case err := <-s.errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	case <-ctx.Done():
		return nil
	}
}

// Shutdown stops the server, waiting for requests in flight up to ctx's
// deadline, then closing what is left.
func (s *HTTPServer) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if err != nil {
		s.srv.Close()
	}
	return err
}
