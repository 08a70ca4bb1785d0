package tier

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"strata/fs"
	"strata/tiers/call"
	"strata/tiers/wasm"
)

// info is the text of /apps/<id>/info: a section for this tier, then the
// parent's info. Only the cloud writes the "version" and "hash" lines, so
// the first of each, wherever it is read, is the authoritative one.
func (t *Tier) info(ctx context.Context, id string) ([]byte, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# %s\napp %s\n", t.cfg.Name, id)
	var as appStats
	t.mu.Lock()
	if p := t.perApp[id]; p != nil {
		as = *p
	}
	t.mu.Unlock()
	switch t.cfg.Role {
	case Cloud:
		app, err := t.cfg.Apps.Stat(id)
		if err != nil {
			if t.pending(id) {
				b.WriteString("deployed no: write module.wasm to deploy\n")
				return b.Bytes(), nil
			}
			return nil, err
		}
		fmt.Fprintf(&b, "version %d\nhash %s\nsize %d\ndeployed %s\n", app.Version, app.Hash, app.Size, app.Deployed.UTC().Format(time.RFC3339))
		b.WriteString("backup yes: a second copy, checked by hash at each read\n")
		if !app.Limits.IsZero() {
			lim := fromRepo(app.Limits)
			fmt.Fprintf(&b, "limit-timeout %s\nlimit-memory-mib %d\n", orDur(lim.Timeout, wasm.DefaultTimeout), orMiB(lim.MemoryMiB))
		}
	case AppEdge:
		if app, err := t.cfg.Apps.Stat(id); err == nil {
			pin := ""
			if app.Pinned {
				pin = ", pinned"
			}
			fmt.Fprintf(&b, "replica yes%s\nreplica-version %d\nreplica-hash %s\nreplica-size %d\n", pin, app.Version, app.Hash, app.Size)
		} else {
			fmt.Fprintf(&b, "replica no: misses fall through to %s", t.cfg.ParentName)
			if t.cfg.PullAfter > 0 {
				fmt.Fprintf(&b, "; pulled after %d misses", t.cfg.PullAfter)
			}
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "hits %d\nmisses %d\n", as.hits, as.misses)
	case Edge:
		fmt.Fprintf(&b, "runs-here no: app requests go to %s\n", t.cfg.ParentName)
	case Client:
		if app, err := t.cfg.Apps.Stat(id); err == nil {
			fmt.Fprintf(&b, "copy yes\ncopy-version %d\ncopy-hash %s\ncopy-size %d\n", app.Version, app.Hash, app.Size)
		} else {
			fmt.Fprintf(&b, "copy no: downloaded after %d invocations\n", t.cfg.PullAfter)
		}
		fmt.Fprintf(&b, "runs-here when the link is below %s and a current copy is held\n", rate(float64(t.cfg.SlowBelow)))
	}
	fmt.Fprintf(&b, "invocations %d\nfailed %d\n", as.invocations, as.failed)
	if t.cfg.Parent != nil {
		up, err := fs.ReadAll(ctx, t.cfg.Parent.File("apps/"+id+"/info"), 64<<10)
		if err != nil {
			fmt.Fprintf(&b, "# %s\nunreachable %s\n", t.cfg.ParentName, call.OneLine(err.Error()))
		} else {
			b.Write(up)
		}
	}
	return b.Bytes(), nil
}

// ParseInfo reads the authoritative version and hash from an info text.
func ParseInfo(info []byte) (version uint64, hash string, err error) {
	var haveV bool
	for _, line := range strings.Split(string(info), "\n") {
		k, v, _ := strings.Cut(line, " ")
		switch {
		case k == "version" && !haveV:
			version, err = strconv.ParseUint(v, 10, 64)
			if err != nil {
				return 0, "", fmt.Errorf("bad version %q", v)
			}
			haveV = true
		case k == "hash" && hash == "":
			hash = v
		}
	}
	if !haveV || hash == "" {
		return 0, "", errors.New("no version and hash lines")
	}
	return version, hash, nil
}

// statusText is the text of /status: this tier's section, then its
// parent's /status (see query.go for the budget and the loop guard).
//
// Each section starts with "# NAME". When the parent cannot be asked its
// section is one line, "unreachable REASON" or "not asked: WHY":
//
//	# edge/g1
//	tier edge/g1
//	...
//	# appedge/g1
//	unreachable appedge/g1 (127.0.0.1:5650): walk status: ... connection refused
func (t *Tier) statusText(ctx context.Context, q query) ([]byte, error) {
	deadline := time.Now().Add(q.budget)
	b := t.status()
	if t.cfg.Parent != nil {
		b = append(b, t.parentSection(ctx, q, deadline, "status", "")...)
	}
	return b, nil
}

// status is this tier's section of /status. Nothing in it waits for the
// network.
func (t *Tier) status() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# %s\ntier %s\nrole %s\nup %s\n", t.cfg.Name, t.cfg.Name, t.cfg.Role, time.Since(t.start).Round(time.Second))
	if t.cfg.Parent != nil {
		st := t.cfg.Parent.State()
		switch {
		case st.Connected:
			fmt.Fprintf(&b, "parent %s %s connected since %s, reconnects %d\n", t.cfg.ParentName, st.Addr, st.Since.UTC().Format(time.RFC3339), st.Reconnects)
		case st.LastError != "":
			fmt.Fprintf(&b, "parent %s %s down: %s", t.cfg.ParentName, st.Addr, call.OneLine(st.LastError))
			if !st.NextAttempt.IsZero() {
				fmt.Fprintf(&b, "; next attempt in %s", time.Until(st.NextAttempt).Round(time.Millisecond))
			}
			b.WriteString("\n")
		default:
			fmt.Fprintf(&b, "parent %s %s idle\n", t.cfg.ParentName, st.Addr)
		}
	}
	fmt.Fprintf(&b, "call-timeout %s\n", t.cfg.CallTimeout)
	if t.cfg.Runtime != nil {
		fmt.Fprintf(&b, "app-time-limit %s\napp-memory-mib %d\n", orDur(t.cfg.Limits.Timeout, wasm.DefaultTimeout), orMiB(t.cfg.Limits.MemoryMiB))
	}
	fmt.Fprintf(&b, "invocations %d\nran-here %d\nforwarded %d\nreplayed %d\nfailed %d\nrecorded %d\nrecorded-kib %d\n",
		t.stats.invocations.Load(), t.stats.ranHere.Load(), t.stats.forwarded.Load(), t.stats.replayed.Load(), t.stats.failed.Load(), t.rec.Len(), t.rec.Bytes()>>10)
	fmt.Fprintf(&b, "traced %d: see /trace, kept %v, at most %d\n", t.traces.Len(), t.traces.win.TTL, t.traces.win.Max)
	if t.cfg.Role == AppEdge {
		fmt.Fprintf(&b, "pull-after %d\nrefresh %s\npulls %d\n", t.cfg.PullAfter, t.cfg.Refresh, t.stats.pulls.Load())
	}
	if t.cfg.Role == Client {
		fmt.Fprintf(&b, "threshold-1 %d invocations: an app invoked more often is downloaded\n", t.cfg.PullAfter)
		fmt.Fprintf(&b, "threshold-2 %s: below it a held copy runs here\n", rate(float64(t.cfg.SlowBelow)))
		if bps, age, ok := t.speed.estimate(); ok {
			fmt.Fprintf(&b, "link-speed %s (%d bytes/s), measured %s ago\n", rate(bps), int64(bps), age.Round(time.Millisecond))
		} else {
			b.WriteString("link-speed unknown: not measured yet\n")
		}
		fmt.Fprintf(&b, "downloads %d\n", t.stats.pulls.Load())
	}
	if t.cfg.Apps != nil {
		for _, a := range t.cfg.Apps.List() {
			pin := ""
			if a.Pinned {
				pin = " pinned"
			}
			fmt.Fprintf(&b, "held %s version %d size %d hash %.12s%s\n", a.ID, a.Version, a.Size, a.Hash, pin)
		}
	}
	t.mu.Lock()
	ids := make([]string, 0, len(t.perApp))
	for id := range t.perApp {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		as := t.perApp[id]
		fmt.Fprintf(&b, "app %s invocations %d hits %d misses %d failed %d\n", id, as.invocations, as.hits, as.misses, as.failed)
	}
	t.mu.Unlock()
	return b.Bytes()
}

func orDur(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}
