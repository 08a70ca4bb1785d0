package ninep

import (
	"bufio"
	"context"
	"errors"
	"log/slog"
	"net"
)

// serve9P2000 serves a 9P2000 connection whose Tversion tv the router has read.
func (s *Server) serve9P2000(ctx context.Context, c net.Conn, r *bufio.Reader, tv tversion, log *slog.Logger) error {
	return errors.New("9P2000: not yet")
}
