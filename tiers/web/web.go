package web

import (
	"bytes"
	"context"
	"crypto/rand"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	iofs "io/fs"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"strata/fs"
)

//go:embed page
var pageFS embed.FS

// Defaults of Config.
const (
	DefaultMaxUpload   = 1 << 30
	DefaultThreshold1  = 5
	DefaultThreshold2  = 50 * 1024
	DefaultCallTimeout = 10 * time.Second
	DefaultMaxInput    = 16 << 20
	// ProbeBytes is what the page downloads to measure the link.
	ProbeBytes = 32 << 10
	maxProbe   = 1 << 20
)

// Config is what the web front end serves and how.
type Config struct {
	// Tier names the tier served ("edge/g1").
	Tier string
	// Root returns the namespace a client sees, as its 9P export does. It
	// is called once per client.
	Root func(ctx context.Context, client string) (fs.Dir, error)
	// Tokens authenticates clients.
	Tokens *Tokens
	// MaxUpload caps one upload in bytes (DefaultMaxUpload if zero).
	MaxUpload int64
	// MaxInput caps an invocation's input (DefaultMaxInput if zero).
	MaxInput int64
	// Threshold1 and Threshold2 are the page's detection rules: an app
	// invoked more than Threshold1 times is downloaded into the browser,
	// and run there while the link is slower than Threshold2 bytes/s.
	Threshold1 int
	Threshold2 int64
	// CallTimeout is the budget of one invocation.
	CallTimeout time.Duration
	// Secure marks the cookie Secure (the page is served over HTTPS).
	Secure bool
	Log    *slog.Logger
}

// Server is the web front end: the page and its API. It is an
// http.Handler.
type Server struct {
	cfg    Config
	log    *slog.Logger
	mux    *http.ServeMux
	page   string // index.html, with the auth error placeholder
	static http.Handler
	probe  []byte

	mu    sync.Mutex
	roots map[string]fs.Dir
}

const authPlaceholder = "{{AUTH_ERROR}}"

// New makes the server of cfg.
func New(cfg Config) (*Server, error) {
	if cfg.Root == nil || cfg.Tokens == nil {
		return nil, errors.New("web: a namespace and a token file are needed")
	}
	if cfg.MaxUpload <= 0 {
		cfg.MaxUpload = DefaultMaxUpload
	}
	if cfg.MaxInput <= 0 {
		cfg.MaxInput = DefaultMaxInput
	}
	if cfg.Threshold1 <= 0 {
		cfg.Threshold1 = DefaultThreshold1
	}
	if cfg.Threshold2 <= 0 {
		cfg.Threshold2 = DefaultThreshold2
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = DefaultCallTimeout
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	page, err := pageFS.ReadFile("page/index.html")
	if err != nil {
		return nil, fmt.Errorf("web: the page is missing from the binary: %w", err)
	}
	if !bytes.Contains(page, []byte(authPlaceholder)) {
		return nil, errors.New("web: the page has no place for the sign-in error")
	}
	static, err := iofs.Sub(pageFS, "page")
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg: cfg, log: log, mux: http.NewServeMux(), page: string(page),
		static: http.StripPrefix("/static/", http.FileServerFS(static)),
		probe:  make([]byte, maxProbe),
		roots:  map[string]fs.Dir{},
	}
	rand.Read(s.probe)
	s.routes()
	return s, nil
}

func (s *Server) routes() {
	m := s.mux
	m.HandleFunc("GET /{$}", s.servePage)
	m.HandleFunc("GET /static/", s.serveStatic)
	m.HandleFunc("POST /api/login", s.login)
	m.HandleFunc("POST /api/logout", s.logout)
	m.Handle("GET /api/whoami", s.auth(s.whoami))
	m.Handle("GET /api/store/{path...}", s.auth(s.storeGet))
	m.Handle("PUT /api/store/{path...}", s.auth(s.storePut))
	m.Handle("POST /api/store/{path...}", s.auth(s.storePost))
	m.Handle("DELETE /api/store/{path...}", s.auth(s.storeDelete))
	m.Handle("GET /api/apps", s.auth(s.appsList))
	m.Handle("GET /api/apps/{id}/info", s.auth(s.appText("info")))
	m.Handle("GET /api/apps/{id}/where", s.auth(s.appText("where")))
	m.Handle("GET /api/apps/{id}/module.wasm", s.auth(s.appModule))
	m.Handle("POST /api/apps/{id}/call", s.auth(s.appCall))
	m.Handle("GET /api/status", s.auth(s.status))
	m.Handle("GET /api/probe", s.auth(s.serveProbe))
	m.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not-exist", fmt.Sprintf("no such API: %s %s", r.Method, r.URL.Path))
	})
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	s.mux.ServeHTTP(sw, r)
	s.log.Debug("http", "method", r.Method, "path", r.URL.Path, "status", sw.status, "bytes", sw.n, "took", time.Since(start).Round(time.Microsecond))
}

// statusWriter records the status and size of a response. It unwraps for
// http.ResponseController.
type statusWriter struct {
	http.ResponseWriter
	status int
	n      int64
	wrote  bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wrote {
		w.status, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	w.wrote = true
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// pageCSP lets the page run its own scripts and compile WebAssembly, and
// nothing from elsewhere.
const pageCSP = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"

// servePage serves the page. With a wrong or revoked token in its cookie
// it is served with 401 and says why.
func (s *Server) servePage(w http.ResponseWriter, r *http.Request) {
	reason := ""
	status := http.StatusOK
	if tok, ok := credentials(r); ok {
		if _, err := s.cfg.Tokens.Check(tok); err != nil {
			reason, status = err.Error(), http.StatusUnauthorized
		}
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", pageCSP)
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(status)
	w.Write([]byte(strings.Replace(s.page, authPlaceholder, html.EscapeString(reason), 1)))
}

func (s *Server) serveStatic(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", pageCSP)
	h.Set("Cache-Control", "no-cache")
	s.static.ServeHTTP(w, r)
}

// cookieName is the cookie that carries a client's token.
const cookieName = "strata_token"

// credentials returns the token a request carries: a bearer header, or
// the cookie.
func credentials(r *http.Request) (string, bool) {
	if a := r.Header.Get("Authorization"); a != "" {
		tok, ok := strings.CutPrefix(a, "Bearer ")
		return strings.TrimSpace(tok), ok
	}
	if c, err := r.Cookie(cookieName); err == nil {
		return c.Value, true
	}
	return "", false
}

// client is an authenticated request's client.
type client struct {
	name string
	root fs.Dir
}

type authHandler func(w http.ResponseWriter, r *http.Request, c *client)

// auth runs h for requests with a valid token, and refuses the others
// with 401 and the reason. A request authenticated by its cookie that
// changes something must come from the page's own origin.
func (s *Server) auth(h authHandler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, _ := credentials(r)
		name, err := s.cfg.Tokens.Check(tok)
		if err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="strata"`)
			writeError(w, http.StatusUnauthorized, "unauthorized", err.Error())
			return
		}
		if r.Method != http.MethodGet && r.Header.Get("Authorization") == "" && !sameOrigin(r) {
			writeError(w, http.StatusForbidden, "permission", "refused: the request comes from another site ("+r.Header.Get("Origin")+")")
			return
		}
		root, err := s.root(r.Context(), name)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		h(w, r, &client{name: name, root: root})
	})
}

// sameOrigin reports whether r, if it names its origin, comes from the
// host it was sent to.
func sameOrigin(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" {
		return true
	}
	_, host, ok := strings.Cut(o, "://")
	return ok && host == r.Host
}

// root returns client's namespace, made once: the namespace keeps the
// client's latest answers, as a 9P session does.
func (s *Server) root(ctx context.Context, name string) (fs.Dir, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d, ok := s.roots[name]; ok {
		return d, nil
	}
	d, err := s.cfg.Root(ctx, name)
	if err != nil {
		return nil, err
	}
	s.roots[name] = d
	return d, nil
}

func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Token string `json:"token"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&in); err != nil {
		writeError(w, http.StatusBadRequest, "invalid", "the sign-in body is not JSON {\"token\": \"...\"}: "+err.Error())
		return
	}
	name, err := s.cfg.Tokens.Check(strings.TrimSpace(in.Token))
	if err != nil {
		writeError(w, http.StatusUnauthorized, "unauthorized", err.Error())
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name: cookieName, Value: strings.TrimSpace(in.Token), Path: "/",
		MaxAge: 90 * 24 * 3600, HttpOnly: true, Secure: s.cfg.Secure, SameSite: http.SameSiteStrictMode,
	})
	s.log.Info("web sign-in", "client", name, "remote", r.RemoteAddr)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, Secure: s.cfg.Secure, SameSite: http.SameSiteStrictMode})
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) whoami(w http.ResponseWriter, r *http.Request, c *client) {
	writeJSON(w, http.StatusOK, map[string]any{
		"client": c.name, "tier": s.cfg.Tier,
		"threshold1": s.cfg.Threshold1, "threshold2": s.cfg.Threshold2,
		"maxUpload": s.cfg.MaxUpload, "probeBytes": ProbeBytes,
	})
}

func (s *Server) status(w http.ResponseWriter, r *http.Request, c *client) {
	s.serveText(w, r, c, "status")
}

func (s *Server) serveText(w http.ResponseWriter, r *http.Request, c *client, p string) {
	n, err := fs.Walk(r.Context(), c.root, p)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	f, ok := n.(fs.File)
	if !ok {
		s.fail(w, r, &fs.Error{Op: "read", Path: p, Kind: fs.IsDir})
		return
	}
	b, err := fs.ReadAll(r.Context(), f, 1<<20)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(b)
}

func (s *Server) serveProbe(w http.ResponseWriter, r *http.Request, c *client) {
	n := ProbeBytes
	if q := r.URL.Query().Get("n"); q != "" {
		if _, err := fmt.Sscan(q, &n); err != nil || n < 1 || n > maxProbe {
			writeError(w, http.StatusBadRequest, "invalid", fmt.Sprintf("probe size %q: want 1 to %d bytes", q, maxProbe))
			return
		}
	}
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Length", fmt.Sprint(n))
	w.Write(s.probe[:n])
}

// kindNames are the error kinds as the API names them.
var kindNames = map[fs.Kind]string{
	fs.NotExist: "not-exist", fs.Exist: "exist", fs.Permission: "permission",
	fs.Invalid: "invalid", fs.NotDir: "not-dir", fs.IsDir: "is-dir", fs.NotEmpty: "not-empty",
	fs.Unsupported: "unsupported", fs.CrossDevice: "invalid", fs.TooLarge: "too-large",
	fs.NameTooLong: "invalid", fs.NoSpace: "no-space", fs.Timeout: "timeout", fs.Canceled: "canceled",
	fs.Unavailable: "unavailable", fs.Busy: "busy", fs.BadHandle: "other", fs.IO: "io",
}

// statusOf is the HTTP status of an error of kind k.
func statusOf(k fs.Kind) int {
	switch k {
	case fs.NotExist:
		return http.StatusNotFound
	case fs.Exist, fs.NotEmpty, fs.IsDir, fs.NotDir:
		return http.StatusConflict
	case fs.Permission:
		return http.StatusForbidden
	case fs.Invalid, fs.CrossDevice, fs.NameTooLong:
		return http.StatusBadRequest
	case fs.TooLarge:
		return http.StatusRequestEntityTooLarge
	case fs.NoSpace:
		return http.StatusInsufficientStorage
	case fs.Timeout:
		return http.StatusGatewayTimeout
	case fs.Unavailable:
		return http.StatusBadGateway
	case fs.Busy:
		return http.StatusServiceUnavailable
	case fs.Unsupported:
		return http.StatusMethodNotAllowed
	}
	return http.StatusInternalServerError
}

func kindName(k fs.Kind) string {
	if n, ok := kindNames[k]; ok {
		return n
	}
	return "other"
}

// fail answers with err, classified.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	k := fs.KindOf(err)
	if statusOf(k) >= 500 {
		s.log.Warn("web request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	writeError(w, statusOf(k), kindName(k), err.Error())
}

func writeError(w http.ResponseWriter, status int, kind, msg string) {
	writeJSON(w, status, map[string]string{"error": msg, "kind": kind})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // the answer is JSON, never HTML
	if err := enc.Encode(v); err != nil {
		status = http.StatusInternalServerError
		b.Reset()
		b.WriteString(`{"error":"encoding the answer failed","kind":"other"}` + "\n")
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(b.Bytes())
}
