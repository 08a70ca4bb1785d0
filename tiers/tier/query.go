package tier

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"strata/fs"
	"strata/mount/remote"
	"strata/tiers/call"
)

// Query files: /status and /trace/ID.
//
// Their text is this tier's section followed by its parent's, read from the
// parent's file of the same name, which in turn appends its own parent's;
// so one read at an edge (or on a client's mount) answers for every tier up
// to the cloud. Each section starts with a "# NAME" line.
//
// The reader does not wait for the whole chain forever: a query has a
// budget (DefaultQueryBudget when a person reads the file). A tier asks its
// parent with what is left of it, minus a margin for the answer's way back,
// and waits for the parent no longer than its own budget, so a slow or
// stopped tier high up costs its own section ("unreachable ..."), not the
// sections below it. A tier tells its parent the budget and how many tiers
// asked before it by writing a request to the file before reading it
//
//	budget-ms 2700
//	hops 1
//
// (a file opened read-only, like `cat status`, gets the defaults). A tier
// MaxQueryHops up from the first reader, or one whose budget is under
// minQueryBudget, does not ask its parent and says so in one line: a
// hierarchy whose parents loop back still answers, once.

// Query defaults.
const (
	// DefaultQueryBudget is how long a read of /status or /trace/ID
	// waits for the tiers above, when the reader does not say.
	DefaultQueryBudget = 3 * time.Second
	// MaxQueryBudget bounds the budget a reader may ask for.
	MaxQueryBudget = 30 * time.Second
	// MaxQueryHops is how many tiers a query crosses at most.
	MaxQueryHops = 8
	// minQueryBudget is the least budget worth asking a parent with.
	minQueryBudget = 200 * time.Millisecond
	// maxQueryText caps the text of a query file (all sections).
	maxQueryText = 4 << 20
	// maxQueryRequest caps the request written to a query file.
	maxQueryRequest = 1024
)

// query is what the reader of a query file asked for.
type query struct {
	budget time.Duration // for the whole answer, the parents' sections included
	hops   int           // how many tiers asked before this one
}

func parseQuery(p []byte) (query, error) {
	q := query{budget: DefaultQueryBudget}
	sc := bufio.NewScanner(bytes.NewReader(p))
	for sc.Scan() {
		k, v, _ := strings.Cut(strings.TrimSpace(sc.Text()), " ")
		switch k {
		case "budget-ms":
			ms, err := strconv.ParseInt(v, 10, 64)
			if err != nil || ms <= 0 {
				return q, fmt.Errorf("bad budget-ms %q", v)
			}
			q.budget = min(time.Duration(ms)*time.Millisecond, MaxQueryBudget)
		case "hops":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return q, fmt.Errorf("bad hops %q", v)
			}
			q.hops = min(n, MaxQueryHops)
		}
		// Other keys are ignored, for readers newer than this tier.
	}
	return q, nil
}

// queryMargin is the part of a budget a tier keeps for the answer's way
// back when it asks its parent.
func queryMargin(left time.Duration) time.Duration {
	return min(max(left/10, 100*time.Millisecond), 500*time.Millisecond)
}

// queryFile is a synthetic read-only text file made at the first read, with
// the query written before it (if any).
type queryFile struct {
	fs.FileDefaults
	name    string
	modTime time.Time
	gen     func(ctx context.Context, q query) ([]byte, error)
}

func (f *queryFile) Stat(context.Context) (fs.Info, error) {
	mt := f.modTime
	if mt.IsZero() {
		mt = time.Now()
	}
	return fs.Info{Name: f.name, Mode: 0o444, ModTime: mt, Stream: true}, nil
}

// SetAttr allows truncation, which means nothing here (O_TRUNC).
func (f *queryFile) SetAttr(_ context.Context, at fs.Attr) error {
	if at.Mode == nil && at.Size != nil && *at.Size == 0 {
		return nil
	}
	return &fs.Error{Op: "setattr", Path: f.name, Kind: fs.Permission}
}

func (f *queryFile) Open(_ context.Context, flag fs.Flag) (fs.Handle, error) {
	return &queryHandle{f: f, writable: flag.Writable()}, nil
}

type queryHandle struct {
	fs.HandleDefaults
	f        *queryFile
	writable bool

	mu   sync.Mutex
	req  []byte
	done bool
	text []byte
	err  error
}

func (h *queryHandle) WriteAt(_ context.Context, p []byte, off int64) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.writable {
		return 0, &fs.Error{Op: "write", Path: h.f.name, Kind: fs.BadHandle, Err: errors.New("not open for writing")}
	}
	if h.done {
		return 0, &fs.Error{Op: "write", Path: h.f.name, Kind: fs.Invalid, Err: errors.New("the text has been made: open the file again for another query")}
	}
	return writeAt(&h.req, p, off, maxQueryRequest, h.f.name)
}

func (h *queryHandle) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.done {
		h.done = true
		q, err := parseQuery(h.req)
		if err != nil {
			h.err = &fs.Error{Op: "read", Path: h.f.name, Kind: fs.Invalid, Err: err}
		} else {
			h.text, h.err = h.f.gen(ctx, q)
		}
		h.req = nil
	}
	if h.err != nil {
		return 0, h.err
	}
	return readAt(h.text, p, off)
}

// Query reads a tier's query file (its "status", or "trace/ID") through
// f, telling the tier to answer, its parents' sections included, before
// ctx's deadline (DefaultQueryBudget from now if ctx has none).
func Query(ctx context.Context, f fs.File) ([]byte, error) {
	return readQuery(ctx, f, 0)
}

// readQuery reads the query file f for a reader hops tiers below the
// first one. The budget it tells is what is left of ctx minus a margin.
func readQuery(ctx context.Context, f fs.File, hops int) ([]byte, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultQueryBudget)
		defer cancel()
	}
	dl, _ := ctx.Deadline()
	left := time.Until(dl)
	if left <= 0 {
		return nil, &fs.Error{Op: "query", Kind: fs.Timeout, Err: errors.New("no time left")}
	}
	h, err := f.Open(ctx, fs.ReadWrite)
	writable := err == nil
	if fs.KindOf(err) == fs.Permission {
		// Not a query file (or an older tier): read it as it is.
		h, err = f.Open(ctx, fs.ReadOnly)
	}
	if err != nil {
		return nil, err
	}
	defer func() { go h.Close(context.WithoutCancel(ctx)) }()
	if writable {
		req := fmt.Appendf(nil, "budget-ms %d\nhops %d\n", max((left-queryMargin(left)).Milliseconds(), 1), hops)
		if _, err := h.WriteAt(ctx, req, 0); err != nil {
			return nil, err
		}
	}
	// The tier may take its whole budget to answer: a step that long is
	// not stuck. ctx's deadline still ends this caller's wait.
	rctx := remote.WithTimeout(ctx, left+remote.DefaultTimeout)
	var out []byte
	buf := make([]byte, 64<<10)
	for {
		n, err := h.ReadAt(rctx, buf, int64(len(out)))
		out = append(out, buf[:n]...)
		if len(out) > maxQueryText {
			return nil, &fs.Error{Op: "read", Kind: fs.TooLarge, Err: fmt.Errorf("more than %d bytes", maxQueryText)}
		}
		if errors.Is(err, io.EOF) || (err == nil && n == 0) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// errNotAsked says why a tier did not ask its parent.
type errNotAsked string

func (e errNotAsked) Error() string { return string(e) }

// askParent reads the parent's query file p for a query q that arrived
// here, answering by deadline.
func (t *Tier) askParent(ctx context.Context, q query, deadline time.Time, p string) ([]byte, error) {
	if q.hops+1 >= MaxQueryHops {
		return nil, errNotAsked(fmt.Sprintf("not asked: %d tiers up from the reader (do the parents loop?)", q.hops+1))
	}
	left := time.Until(deadline)
	if left-queryMargin(left) < minQueryBudget {
		return nil, errNotAsked(fmt.Sprintf("not asked: %v left of the reader's budget", left.Round(time.Millisecond)))
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	b, err := readQuery(ctx, t.cfg.Parent.File(p), q.hops+1)
	if err != nil {
		return nil, err
	}
	if len(b) > 0 && b[len(b)-1] != '\n' {
		b = append(b, '\n')
	}
	return b, nil
}

// parentSection is the parent's sections of the query file p, or one
// section that says why there are none. notExist words a NotExist answer.
func (t *Tier) parentSection(ctx context.Context, q query, deadline time.Time, p, notExist string) []byte {
	up, err := t.askParent(ctx, q, deadline, p)
	if err == nil {
		return up
	}
	var line string
	var na errNotAsked
	switch {
	case errors.As(err, &na):
		line = string(na)
	case fs.KindOf(err) == fs.NotExist && notExist != "":
		line = notExist
	default:
		line = "unreachable " + call.OneLine(err.Error())
	}
	return fmt.Appendf(nil, "# %s\n%s\n", t.cfg.ParentName, line)
}
