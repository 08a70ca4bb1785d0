package web

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"strata/fs"
	"strata/tiers/call"
	"strata/tiers/tier"
)

// maxModule caps a module served to the page.
const maxModule = 64 << 20

type appEntry struct {
	ID      string `json:"id"`
	Version uint64 `json:"version"`
	Hash    string `json:"hash"`
	Size    int64  `json:"size"`
	Info    string `json:"info"`
	Error   string `json:"error,omitempty"`
}

// appID is the app a request names, checked.
func appID(r *http.Request) (string, error) {
	id := r.PathValue("id")
	if _, _, err := call.ParseID(call.KindApp + "." + id + ".00000000"); err != nil {
		return "", &fs.Error{Op: "app", Path: id, Kind: fs.Invalid, Err: errors.New("an app id is lower-case letters, digits, '_' and '-'")}
	}
	return id, nil
}

// readText reads the text file at p of the client's namespace.
func (c *client) readText(ctx context.Context, p string, max int) ([]byte, error) {
	n, err := fs.Walk(ctx, c.root, p)
	if err != nil {
		return nil, err
	}
	f, ok := n.(fs.File)
	if !ok {
		return nil, &fs.Error{Op: "read", Path: p, Kind: fs.IsDir}
	}
	return fs.ReadAll(ctx, f, max)
}

// appsList lists the apps of /apps with their info, read side by side.
func (s *Server) appsList(w http.ResponseWriter, r *http.Request, c *client) {
	ctx := r.Context()
	n, err := c.root.Lookup(ctx, "apps")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	d, ok := n.(fs.Dir)
	if !ok {
		s.fail(w, r, &fs.Error{Op: "list", Path: "apps", Kind: fs.NotDir})
		return
	}
	list, err := d.ReadDir(ctx)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	apps := make([]appEntry, 0, len(list))
	for _, info := range list {
		if info.IsDir() {
			apps = append(apps, appEntry{ID: info.Name})
		}
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range apps {
		a := &apps[i]
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			text, err := c.readText(ctx, "apps/"+a.ID+"/info", 64<<10)
			if err != nil {
				a.Error = err.Error()
				return
			}
			a.Info = string(text)
			a.Version, a.Hash, _ = tier.ParseInfo(text)
			a.Size = infoSize(text)
		})
	}
	wg.Wait()
	writeJSON(w, http.StatusOK, map[string]any{"apps": apps})
}

// infoSize is the module size an info text gives (its first "size" line,
// the cloud's).
func infoSize(text []byte) int64 {
	for _, line := range strings.Split(string(text), "\n") {
		if v, ok := strings.CutPrefix(line, "size "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}

// appText serves an app's text file: info or where.
func (s *Server) appText(name string) authHandler {
	return func(w http.ResponseWriter, r *http.Request, c *client) {
		id, err := appID(r)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		s.serveText(w, r, c, "apps/"+id+"/"+name)
	}
}

// appModule serves an app's module, with the version and hash its info
// gives, so that the page can check what it keeps.
func (s *Server) appModule(w http.ResponseWriter, r *http.Request, c *client) {
	ctx := r.Context()
	id, err := appID(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	info, err := c.readText(ctx, "apps/"+id+"/info", 64<<10)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	version, hash, err := tier.ParseInfo(info)
	if err != nil {
		s.fail(w, r, &fs.Error{Op: "module", Path: id, Kind: fs.Unavailable, Err: fmt.Errorf("the app's info has no version: %w", err)})
		return
	}
	mod, err := c.readText(ctx, "apps/"+id+"/module.wasm", maxModule)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/wasm")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Length", strconv.Itoa(len(mod)))
	h.Set("X-Strata-Hash", hash)
	h.Set("X-Strata-Version", strconv.FormatUint(version, 10))
	w.Write(mod)
}

// appCall invokes an app with the body as input, through the client's
// /apps/<id>/calls/<request id>, as a tier below the edge would.
func (s *Server) appCall(w http.ResponseWriter, r *http.Request, c *client) {
	start := time.Now()
	id, err := appID(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	reqID := r.Header.Get("X-Strata-Request-ID")
	if reqID == "" {
		reqID = call.NewID(call.KindApp, id)
	}
	if kind, app, err := call.ParseID(reqID); err != nil || kind != call.KindApp || app != id {
		msg := fmt.Sprintf("request id %.80q is not app.%s.<unique>", reqID, id)
		if err != nil {
			msg += ": " + err.Error()
		}
		writeError(w, http.StatusBadRequest, "invalid", msg)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, s.cfg.MaxInput)
	http.NewResponseController(w).SetReadDeadline(time.Now().Add(stepTimeout))
	input, err := io.ReadAll(r.Body)
	if err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			writeError(w, http.StatusRequestEntityTooLarge, "too-large", fmt.Sprintf("the input is more than the cap of %d bytes", s.cfg.MaxInput))
			return
		}
		writeError(w, http.StatusBadRequest, "invalid", "reading the input: "+err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.CallTimeout)
	defer cancel()
	req := &call.Request{ID: reqID, App: id, Input: input, Budget: s.cfg.CallTimeout}
	n, err := fs.Walk(ctx, c.root, "apps/"+id+"/calls/"+reqID)
	var rep *call.Reply
	if err == nil {
		f, ok := n.(fs.File)
		if !ok {
			err = &fs.Error{Op: "invoke", Path: id, Kind: fs.IsDir}
		} else {
			rep, err = tier.ForwardFile(ctx, f, req)
		}
	}
	took := time.Since(start)
	h := w.Header()
	h.Set("X-Strata-Request-ID", reqID)
	h.Set("X-Strata-Elapsed-Ms", strconv.FormatInt(took.Milliseconds(), 10))
	h.Set("Cache-Control", "no-store")
	if err != nil {
		s.log.Info("web call failed", "client", c.name, "id", reqID, "err", err)
		k := fs.KindOf(err)
		writeJSON(w, statusOf(k), map[string]string{"error": err.Error(), "kind": kindName(k), "id": reqID})
		return
	}
	h.Set("X-Strata-Where", rep.Where)
	h.Set("X-Strata-Why", rep.Why)
	h.Set("X-Strata-Route", rep.Route)
	if !rep.OK {
		s.log.Info("web call: the app failed", "client", c.name, "id", reqID, "where", rep.Where, "reason", rep.Reason)
		status := statusOf(rep.Kind)
		if status == http.StatusInternalServerError {
			status = http.StatusUnprocessableEntity
		}
		stderr := rep.Err
		if len(stderr) > 64<<10 {
			stderr = stderr[len(stderr)-64<<10:]
		}
		writeJSON(w, status, map[string]string{"error": rep.Reason, "kind": kindName(rep.Kind), "id": reqID, "where": rep.Where, "stderr": string(stderr)})
		return
	}
	s.log.Info("web call", "client", c.name, "id", reqID, "where", rep.Where, "took", took.Round(time.Microsecond))
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Length", strconv.Itoa(len(rep.Out)))
	w.Write(rep.Out)
}
