package ninep

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"

	"github.com/hugelgupf/p9/p9"

	"strata/fs"
)

// serve9P2000L serves a 9P2000.L connection whose Tversion tv the router
// has read (and not answered) with github.com/hugelgupf/p9's server: one
// p9.Server per connection, whose attacher is the connection's tree.
func (s *Server) serve9P2000L(ctx context.Context, c net.Conn, r *bufio.Reader, tv tversion, log *slog.Logger) error {
	// Operations end with the connection: when the transport fails, the
	// requests still running are canceled. Handles are closed after that
	// with a context that is not canceled, so their data can be
	// acknowledged or refused properly.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	lc := &lconn{
		attach: func(ctx context.Context) (fs.Dir, error) { return s.attach(ctx, c) },
		ctx:    ctx,
		cctx:   context.WithoutCancel(ctx),
		log:    log,
		open:   &openFiles{max: s.maxOpen()},
	}
	w := newLWriter(c, s.maxOutstanding())
	w.outstanding = 1 // the replayed Tversion
	stop := w.watch(ctx)
	defer stop()
	rd := newLReader(ltversionFrame(tv.tag, tv.msize, lreplayVersion(tv)), r, w, tv.msize, log, frameClock{c: c, timeout: s.frameTimeout()}, func(err error) {
		cancel(fmt.Errorf("9P2000.L connection ended: %w", err))
	})

	srv := p9.NewServer(lc, p9.WithServerLogger(lp9Logger{log}))
	srv.Handle(rd, w)

	err := rd.err
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return fmt.Errorf("ninep: 9P2000.L: %w", err)
}

// lreplayVersion is the version string p9 is asked for: the client's when it
// is a 9P2000.L variant p9 knows ("9P2000.L.Google.N"), else "9P2000.L".
func lreplayVersion(tv tversion) string {
	n, ok := strings.CutPrefix(tv.asked, "9P2000.L.Google.")
	if !ok || n == "" || len(n) > 9 || strings.Trim(n, "0123456789") != "" {
		return "9P2000.L"
	}
	return tv.asked
}

// lp9Logger sends p9's log lines to slog: the per-message trace ("send",
// "recv") at ltrace, everything else at debug level, and the text is
// formatted only when the level is enabled.
type lp9Logger struct{ log *slog.Logger }

// ltrace is the level of p9's per-message trace, below Debug.
const ltrace = slog.LevelDebug - 4

func (l lp9Logger) level(format string) slog.Level {
	switch {
	case strings.HasPrefix(format, "send ["), strings.HasPrefix(format, "recv ["):
		return ltrace
	case strings.HasPrefix(format, "panic"):
		return slog.LevelError
	}
	return slog.LevelDebug
}

func (l lp9Logger) Printf(format string, v ...any) {
	lvl := l.level(format)
	if !l.log.Enabled(context.Background(), lvl) {
		return
	}
	l.log.Log(context.Background(), lvl, "p9: "+fmt.Sprintf(format, v...))
}

func (l lp9Logger) Print(v ...any) {
	if !l.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	l.log.Debug("p9: " + fmt.Sprint(v...))
}
