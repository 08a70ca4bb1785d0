package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"strata/fs"
)

// load reads the manifests, restores a lost primary manifest from the
// backup's, removes module files no record names, and brings the backup up
// to date. It runs in Open, before anyone else has r. On an object store
// another repo may be opening or changing the same prefix meanwhile: a
// first manifest or a restored one is written only where there is still
// none (or still the unreadable one), and otherwise read again.
func (r *Repo) load(ctx context.Context) error {
	for try := 1; ; try++ {
		err := r.loadOnce(ctx)
		if !errors.Is(err, errConflict) || try == maxCommitTries {
			return err
		}
		r.log.Info("repo: the manifest changed elsewhere while opening; reading it again", "try", try)
	}
}

func (r *Repo) loadOnce(ctx context.Context) error {
	m, _, ptag, perr := r.pri.readManifest(ctx)
	var (
		bm    manifest
		braw  []byte
		btag  string
		berr  = errNoManifest
		fresh bool
	)
	if r.bak != nil {
		bm, braw, btag, berr = r.bak.readManifest(ctx)
	}
	// In a directory any failure to read the manifest counts as its
	// loss; on an object store only its absence or bad content does (a
	// store that does not answer is not a lost manifest).
	lost := perr != nil && (!r.shared || errors.Is(perr, errNoManifest) || errors.Is(perr, errBadManifest))
	switch {
	case perr == nil:
	case lost && berr == nil:
		r.log.Warn("repo: primary manifest lost; restored from the backup", "where", r.pri.where(), "err", perr, "apps", len(bm.Apps))
		m = bm
		tag, err := r.pri.writeManifest(ctx, m, ptag)
		if err != nil {
			return err
		}
		ptag = tag
	case errors.Is(perr, errNoManifest):
		// The manifest is written when the directory is first opened, so
		// module files without one mean it was lost: refuse rather than
		// guess versions, or remove what may be the last copy.
		for _, s := range []side{r.pri, r.bak} {
			if s == nil {
				continue
			}
			mods, err := s.modules(ctx)
			if err != nil {
				return err
			}
			if len(mods) > 0 {
				if r.shared {
					if _, err := r.pri.manifestTag(ctx); err == nil {
						return errConflict // written meanwhile by another repo
					}
				}
				return &fs.Error{Kind: fs.IO, Err: fmt.Errorf("no usable %s, but the %s %s holds %d module files; restore the manifest or remove the module files", ManifestName, s.role(), s.where(), len(mods))}
			}
		}
		m = manifest{Format: manifestFormat, Removed: map[string]uint64{}}
		if r.shared {
			m.Seq = 1
		}
		fresh = true
		tag, err := r.pri.writeManifest(ctx, m, "")
		if err != nil {
			return err
		}
		ptag = tag
	case lost:
		return &fs.Error{Kind: fs.IO, Err: fmt.Errorf("%w; no backup manifest to restore it from", perr)}
	default:
		return perr
	}

	// State in memory; recency follows deploy order.
	r.apps = map[string]*entry{}
	recs := slices.Clone(m.Apps)
	slices.SortFunc(recs, func(a, b record) int { return a.Deployed.Compare(b.Deployed) })
	for _, rec := range recs {
		r.tick++
		r.apps[rec.ID] = &entry{rec: rec, used: r.tick}
	}
	r.removed = m.Removed
	r.seq = m.Seq
	r.tag = ptag

	if !fresh {
		r.removeOrphans(ctx, r.pri)
	}
	if r.bak != nil {
		switch {
		case berr == nil:
			r.btag, r.bseq = btag, bm.Seq
		case errors.Is(berr, errBadManifest):
			r.btag = btag
		}
		if berr != nil && !errors.Is(berr, errNoManifest) {
			r.log.Warn("repo: backup manifest unreadable; rewriting it", "where", r.bak.where(), "err", berr)
		}
		r.syncBackup(ctx, m, bm, braw, berr == nil)
	}
	return nil
}

// orphanGrace is OrphanGrace; tests shorten it.
var orphanGrace = OrphanGrace

// removeOrphans removes the modules in s that no record names. On an
// object store only those older than OrphanGrace go: a younger one may be
// the upload of a deploy in progress in another repo.
func (r *Repo) removeOrphans(ctx context.Context, s side) int {
	mods, err := s.modules(ctx)
	if err != nil {
		r.log.Warn("repo: listing modules", "side", s.role(), "where", s.where(), "err", err)
		return 0
	}
	named := map[string]bool{}
	for _, e := range r.apps {
		named[s.moduleName(e.rec)] = true
	}
	n := 0
	for _, mod := range mods {
		if named[mod.name] {
			continue
		}
		if s.shared() && (mod.modified.IsZero() || time.Since(mod.modified) < orphanGrace) {
			continue
		}
		if err := s.remove(ctx, mod.name); err != nil {
			r.log.Warn("repo: removing an orphaned module", "side", s.role(), "module", mod.name, "err", err)
			continue
		}
		r.log.Info("repo: removed an orphaned module", "side", s.role(), "module", mod.name)
		n++
	}
	return n
}

// syncBackup brings the backup up to date with the primary manifest m:
// every module whose backup record differs or whose copy is missing or of
// the wrong size is copied from the (verified) primary, and the backup
// manifest is rewritten if it differs. bm is the backup manifest, if ok.
func (r *Repo) syncBackup(ctx context.Context, m, bm manifest, braw []byte, ok bool) {
	if r.shared && ok && bm.Seq > m.Seq {
		// Another repo committed after m was read, and its backup is
		// ahead of m: it keeps its own backup up to date.
		return
	}
	have := map[string]record{}
	if ok {
		for _, rec := range bm.Apps {
			have[rec.ID] = rec
		}
	}
	copied := 0
	for _, rec := range m.Apps {
		if b, found := have[rec.ID]; found && b.Hash == rec.Hash && b.Object == rec.Object {
			if key, err := r.bak.statKey(ctx, r.bak.moduleName(rec)); err == nil && key.size == rec.Size {
				continue
			}
		}
		if _, _, err := r.bak.read(ctx, rec); err == nil {
			continue // put in place before a crash
		}
		mod, _, err := r.pri.read(ctx, rec)
		if err != nil {
			if r.shared && errors.Is(err, errMissing) {
				if tag, terr := r.pri.manifestTag(ctx); terr == nil && tag != r.tag {
					continue // replaced or removed by another repo meanwhile
				}
			}
			r.log.Error("repo: backup copy out of date and the primary unreadable", "app", rec.ID, "version", rec.Version, "err", err)
			continue
		}
		if err := r.restore(ctx, r.bak, rec, mod); err != nil {
			r.log.Error("repo: refreshing the backup copy", "app", rec.ID, "err", err)
			continue
		}
		copied++
	}
	removed := r.removeOrphans(ctx, r.bak)
	want := m.encode()
	if copied > 0 || removed > 0 || !bytes.Equal(want, braw) {
		if err := r.writeBackup(ctx, m); err != nil {
			r.log.Error("repo: writing the backup manifest", "where", r.bak.where(), "err", err)
			return
		}
		if copied > 0 || removed > 0 || ok {
			r.log.Info("repo: backup brought up to date", "where", r.bak.where(), "copied", copied, "removed", removed)
		}
	}
}

// writeBackup writes m as the backup manifest. On an object store the
// backup manifest only moves forward: m is written over the version last
// seen, and if another repo wrote one meanwhile, m goes in only if it is
// newer (a larger Seq) than that. The writer lock is held.
func (r *Repo) writeBackup(ctx context.Context, m manifest) error {
	if !r.shared {
		_, err := r.bak.writeManifest(ctx, m, "")
		return err
	}
	for try := 1; try <= maxCommitTries; try++ {
		if r.btag != "" && m.Seq <= r.bseq {
			return nil // the backup holds this commit or a later one
		}
		tag, err := r.bak.writeManifest(ctx, m, r.btag)
		if err == nil {
			r.btag, r.bseq = tag, m.Seq
			return nil
		}
		if !errors.Is(err, errConflict) {
			return err
		}
		bm, _, btag, err := r.bak.readManifest(ctx)
		switch {
		case err == nil:
			r.btag, r.bseq = btag, bm.Seq
		case errors.Is(err, errNoManifest):
			r.btag, r.bseq = "", 0
		case errors.Is(err, errBadManifest):
			r.btag, r.bseq = btag, 0
		default:
			return err
		}
	}
	return &fs.Error{Kind: fs.Busy, Err: fmt.Errorf("the backup manifest changed under %d attempts in a row to write it", maxCommitTries)}
}

// reload reads the primary manifest again and makes it the state in
// memory. A lost or unreadable one is restored from the newer of the
// backup's and the state in memory (by Seq). On an object store only;
// the writer lock is held.
func (r *Repo) reload(ctx context.Context) error {
	m, _, tag, err := r.pri.readManifest(ctx)
	if err != nil {
		if !errors.Is(err, errNoManifest) && !errors.Is(err, errBadManifest) {
			return err
		}
		src := r.manifestWith(nil, nil)
		src.Seq = r.seq
		from := "memory"
		if r.bak != nil {
			if bm, _, btag, berr := r.bak.readManifest(ctx); berr == nil {
				r.btag, r.bseq = btag, bm.Seq
				if bm.Seq > src.Seq {
					src, from = bm, "the backup"
				}
			}
		}
		ntag, werr := r.pri.writeManifest(ctx, src, tag)
		if werr != nil {
			return werr
		}
		r.log.Warn("repo: primary manifest lost; restored", "from", from, "where", r.pri.where(), "was", err, "apps", len(src.Apps))
		m, tag = src, ntag
	}
	before, arrived := r.arrivals(m)
	r.apply(m, "")
	r.tag = tag
	if m.Seq != before {
		r.log.Info("repo: manifest read again", "seq", m.Seq, "was", before, "apps", len(m.Apps), "arrived", len(arrived))
	}
	if len(arrived) > 0 && r.arrived != nil {
		r.arrived(arrived)
	}
	return nil
}

// arrivals returns the Seq of the state in memory and the apps of m that
// it does not hold as they are in m.
func (r *Repo) arrivals(m manifest) (uint64, []App) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []App
	for _, rec := range m.Apps {
		if e, ok := r.apps[rec.ID]; !ok || e.rec.Hash != rec.Hash || e.rec.Version != rec.Version {
			out = append(out, rec.app())
		}
	}
	return r.seq, out
}

// refresh checks the primary manifest's tag and, if another repo changed
// it, reads it again. On an object store only; the writer lock is held.
func (r *Repo) refresh(ctx context.Context) error {
	n := r.refreshes.Add(1)
	tag, err := r.pri.manifestTag(ctx)
	switch {
	case err == nil && tag == r.tag:
	case err == nil || errors.Is(err, errNoManifest):
		if err := r.reload(ctx); err != nil {
			return err
		}
	default:
		return err
	}
	r.refreshed = n
	return nil
}

// catchUp makes sure the state in memory is at least as new as the
// manifest was when catchUp was called: it waits for a check of the
// manifest that starts after that, its own or one another caller made,
// so that concurrent callers share one request.
func (r *Repo) catchUp(ctx context.Context) error {
	asked := r.refreshes.Load()
	if err := r.lock(ctx); err != nil {
		return err
	}
	defer r.unlock()
	if err := r.ready(ctx, "check manifest", ""); err != nil {
		return err
	}
	if r.refreshed > asked {
		return nil
	}
	return r.refresh(ctx)
}

// poll checks the manifest every period until the repo is closed.
func (r *Repo) poll(every time.Duration) {
	defer r.polling.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-r.bg.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(r.bg, every+objTimeout)
		err := r.catchUp(ctx)
		cancel()
		if r.bg.Err() != nil {
			return
		}
		switch {
		case err != nil && !failing:
			failing = true
			r.log.Warn("repo: checking the manifest failed; serving the apps as last read", "where", r.pri.where(), "err", err)
		case err == nil && failing:
			failing = false
			r.log.Info("repo: checking the manifest works again", "where", r.pri.where())
		}
	}
}
