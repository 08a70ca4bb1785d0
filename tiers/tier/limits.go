package tier

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	iofs "io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"strata/fs"
	"strata/tiers/repo"
	"strata/tiers/wasm"
)

// Per-app limits. The cloud keeps them with each app's record in its repo
// (written to /apps/ID/limits), so that every cloud node sharing the repo
// runs the app under the same ones, and shows them in info as
// limit-timeout and limit-memory-mib; an app edge takes them from there
// with each replica, so an app runs under the same limits wherever it
// runs. An app without its own limits runs under the tier's Config.Limits.

// Bounds of per-app limits.
const (
	MaxAppTimeout = 10 * time.Minute
	minAppTimeout = time.Millisecond
)

// limitsFor returns the limits app runs under here, and whether they are
// its own.
func (t *Tier) limitsFor(app string) (wasm.Limits, bool) {
	lim, own := t.hasOwnLimits(app)
	if !own {
		return t.cfg.Limits, false
	}
	if lim.MaxOutput == 0 {
		lim.MaxOutput = t.cfg.Limits.MaxOutput
	}
	return lim, true
}

// hasOwnLimits returns app's own limits, if it has any: at the cloud from
// its record in the repo, elsewhere as taken with its replica.
func (t *Tier) hasOwnLimits(app string) (wasm.Limits, bool) {
	if t.keepsLimits() {
		a, err := t.cfg.Apps.Stat(app)
		if err != nil || a.Limits.IsZero() {
			return wasm.Limits{}, false
		}
		return fromRepo(a.Limits), true
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	lim, ok := t.appLimits[app]
	return lim, ok
}

// keepsLimits reports whether the apps' own limits are set here: at the
// cloud, in its repo.
func (t *Tier) keepsLimits() bool { return t.cfg.Role == Cloud && t.cfg.Apps != nil }

func fromRepo(l repo.Limits) wasm.Limits {
	return wasm.Limits{Timeout: time.Duration(l.TimeoutMS) * time.Millisecond, MemoryMiB: l.MemoryMiB}
}

func toRepo(l wasm.Limits) repo.Limits {
	return repo.Limits{TimeoutMS: l.Timeout.Milliseconds(), MemoryMiB: l.MemoryMiB}
}

// setLimits records app's own limits (ok false: none).
func (t *Tier) setLimits(app string, lim wasm.Limits, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if ok {
		t.appLimits[app] = lim
	} else {
		delete(t.appLimits, app)
	}
}

// limitsText is the text of /apps/ID/limits: what app runs under here.
func (t *Tier) limitsText(app string) []byte {
	lim, own := t.limitsFor(app)
	src := "the tier's defaults"
	if own {
		src = "the app's own"
	}
	return fmt.Appendf(nil, "timeout %s\nmemory-mib %d\n# %s\n", orDur(lim.Timeout, wasm.DefaultTimeout), orMiB(lim.MemoryMiB), src)
}

func orMiB(m uint32) uint32 {
	if m == 0 {
		return wasm.DefaultMemoryMiB
	}
	return m
}

// ParseLimits reads "timeout D" and "memory-mib N" lines (or, in info,
// "limit-timeout" and "limit-memory-mib"); ok is false if there are none.
func ParseLimits(text []byte, prefix string) (lim wasm.Limits, ok bool, err error) {
	for _, line := range strings.Split(string(text), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, _ := strings.Cut(line, " ")
		v = strings.TrimSpace(v)
		switch k {
		case prefix + "timeout":
			d, err := time.ParseDuration(v)
			if err != nil || d < minAppTimeout || d > MaxAppTimeout {
				return lim, false, fmt.Errorf("timeout %q: want a duration from %v to %v", v, minAppTimeout, MaxAppTimeout)
			}
			lim.Timeout, ok = d, true
		case prefix + "memory-mib":
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil || n < 1 || n > wasm.MaxMemoryMiB {
				return lim, false, fmt.Errorf("memory-mib %q: want 1 to %d", v, wasm.MaxMemoryMiB)
			}
			lim.MemoryMiB, ok = uint32(n), true
		default:
			if prefix == "" {
				return lim, false, fmt.Errorf("unknown line %q: want timeout DURATION or memory-mib N", line)
			}
		}
	}
	return lim, ok, nil
}

// moveLimits moves the apps' own limits from Config.LimitsFile, where a
// cloud kept them before its repo did, into the repo, and removes the
// file. An app that has limits in the repo keeps them; one no longer
// deployed is dropped.
func (t *Tier) moveLimits() error {
	if t.cfg.LimitsFile == "" || !t.keepsLimits() {
		return nil
	}
	b, err := os.ReadFile(t.cfg.LimitsFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var saved map[string]savedLimits
	if err := json.Unmarshal(b, &saved); err != nil {
		return fmt.Errorf("reading %s: %w", t.cfg.LimitsFile, err)
	}
	for app, s := range saved {
		a, err := t.cfg.Apps.Stat(app)
		if err != nil {
			t.log.Warn("app limits dropped: the app is not deployed", "app", app, "file", t.cfg.LimitsFile)
			continue
		}
		if !a.Limits.IsZero() {
			continue
		}
		if err := t.cfg.Apps.SetLimits(app, repo.Limits{TimeoutMS: s.TimeoutMS, MemoryMiB: s.MemoryMiB}); err != nil {
			return fmt.Errorf("moving the limits of %s from %s into the repo: %w", app, t.cfg.LimitsFile, err)
		}
	}
	if err := os.Remove(t.cfg.LimitsFile); err != nil {
		return err
	}
	t.log.Info("app limits moved into the repo", "apps", len(saved), "file", t.cfg.LimitsFile)
	return nil
}

// savedLimits is an app's entry in Config.LimitsFile.
type savedLimits struct {
	TimeoutMS int64  `json:"timeout_ms,omitempty"`
	MemoryMiB uint32 `json:"memory_mib,omitempty"`
}

// WriteFileAtomic replaces the file at path with b, with permission bits
// perm: written to a temporary file, synced, renamed over path, and the
// directory synced, so a crash leaves the old content or the new.
func WriteFileAtomic(path string, b []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err = f.Write(b); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// limitsFile is /apps/ID/limits: read it for the limits the app runs
// under here; at the cloud, write "timeout D" and "memory-mib N" lines to
// set them (an empty write goes back to the defaults).
type limitsFile struct {
	fs.FileDefaults
	a *appDir
}

func (l *limitsFile) path() string { return "apps/" + l.a.id + "/limits" }

func (l *limitsFile) Stat(context.Context) (fs.Info, error) {
	in := textInfo("limits")
	if l.a.t.cfg.Role == Cloud {
		in.Mode = 0o644
	}
	return in, nil
}

func (l *limitsFile) SetAttr(_ context.Context, at fs.Attr) error {
	if l.a.t.cfg.Role == Cloud && at.Mode == nil {
		return nil
	}
	return &fs.Error{Op: "setattr", Path: l.path(), Kind: fs.Permission}
}

func (l *limitsFile) Open(ctx context.Context, flag fs.Flag) (fs.Handle, error) {
	t := l.a.t
	if !flag.Writable() {
		if _, held := t.Held(l.a.id); t.cfg.Role != Cloud && !held {
			// It would run further up: show the limits there.
			b, err := fs.ReadAll(ctx, t.cfg.Parent.File(l.path()), 4096)
			if err != nil {
				return nil, t.parentErr("read", l.path(), err)
			}
			return &bytesHandle{b: b}, nil
		}
		return &bytesHandle{b: t.limitsText(l.a.id)}, nil
	}
	if !l.a.t.keepsLimits() {
		return nil, &fs.Error{Op: "open", Path: l.path(), Kind: fs.Permission, Err: fmt.Errorf("limits are set at the cloud, not at %s", l.a.t.cfg.Name)}
	}
	return &limitsHandle{l: l}, nil
}

type limitsHandle struct {
	fs.HandleDefaults
	l   *limitsFile
	mu  sync.Mutex
	buf []byte
}

func (h *limitsHandle) WriteAt(_ context.Context, p []byte, off int64) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return writeAt(&h.buf, p, off, 4096, h.l.path())
}

func (h *limitsHandle) Close(context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	t, app := h.l.a.t, h.l.a.id
	lim, ok, err := ParseLimits(bytes.TrimSpace(h.buf), "")
	if err != nil {
		return &fs.Error{Op: "write", Path: h.l.path(), Kind: fs.Invalid, Err: err}
	}
	if ok {
		// A line not given keeps its default.
		def := t.cfg.Limits
		if lim.Timeout == 0 {
			lim.Timeout = def.Timeout
		}
		if lim.MemoryMiB == 0 {
			lim.MemoryMiB = def.MemoryMiB
		}
	}
	var own repo.Limits
	if ok {
		own = toRepo(lim)
	}
	if err := t.cfg.Apps.SetLimits(app, own); err != nil {
		if errors.Is(err, iofs.ErrNotExist) {
			return &fs.Error{Op: "write", Path: h.l.path(), Kind: fs.NotExist,
				Err: fmt.Errorf("app %s has no module yet: deploy it, then set its limits", app)}
		}
		return &fs.Error{Op: "write", Path: h.l.path(), Kind: fs.IO, Err: err}
	}
	t.log.Info("app limits set", "app", app, "timeout", lim.Timeout, "memory_mib", lim.MemoryMiB, "own", ok)
	return nil
}
