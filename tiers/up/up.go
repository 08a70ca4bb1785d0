// Package up runs a whole hierarchy in one process on loopback: a cloud
// and N groups of an app edge and an edge, joined by encrypted links, with
// keys made on first run and the sample apps built and deployed. It is
// what `strata up` runs and what the end-to-end tests build on.
package up

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"strata/tiers/appedge"
	"strata/tiers/apps"
	"strata/tiers/cloud"
	"strata/tiers/edge"
	"strata/tiers/keyring"
	"strata/tiers/tier"
	"strata/tiers/wasm"
	"strata/tiers/web"
)

// Defaults.
const (
	DefaultGroups  = 1
	DefaultClients = 2
	// DefaultPort is the first port of the fixed layout: the cloud's
	// encrypted and plain ports, then 10 ports per group.
	DefaultPort = 5640
)

// PinnedApps are held by every app edge from the start.
var PinnedApps = []string{"upper"}

// Config is a hierarchy.
type Config struct {
	// Dir holds everything: keys/, cloud/, g1/appedge, g1/edge, ...,
	// build/ and up.json. A restart with the same Dir keeps it all.
	Dir     string
	Groups  int // DefaultGroups if zero
	Clients int // clients per group, DefaultClients if zero
	// Port is the first port of the layout; 0 picks free ports.
	Port int
	// Modules are the apps to deploy at the cloud; nil builds the
	// sample apps (with the go command) into Dir/build.
	Modules map[string][]byte
	// Timeout bounds each remote step between tiers (0: default).
	Timeout     time.Duration
	CallTimeout time.Duration
	Refresh     time.Duration
	PullAfter   int
	Limits      wasm.Limits
	// WasmCache is the directory of compiled modules that every tier
	// shares (Dir/wasm-cache if empty).
	WasmCache string
	// Threshold1 and Threshold2 are the web page's detection rules (the
	// web package's defaults if zero).
	Threshold1 int
	Threshold2 int64
	// MaxUpload caps an upload through the web page (default if zero).
	MaxUpload int64
	// Store, if not empty, is the URL of an object store (see
	// objstore.ParseURL) for the edges' stores instead of the disk: group
	// gN's edge keeps its store under the URL's prefix /gN.
	Store string
	Log   *slog.Logger
}

// groupStore is the store URL of group g's edge: raw with g added to its
// prefix.
func groupStore(raw, g string) (string, error) {
	if raw == "" {
		return "", nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("the store URL %q: %w", raw, err)
	}
	u.Path = path.Join("/", u.Path, g)
	return u.String(), nil
}

// Entry is one tier in up.json.
type Entry struct {
	Role  string `json:"role"`
	Group string `json:"group"`
	Name  string `json:"name"`
	Addr  string `json:"addr"`          // the encrypted port
	Local string `json:"local"`         // the plain 9P port on loopback
	Web   string `json:"web,omitempty"` // an edge's web page
}

// ClientEntry is one client in up.json: the edge it uses and its keyset.
type ClientEntry struct {
	Name  string `json:"name"`
	Group string `json:"group"`
	Edge  string `json:"edge"`
	Key   string `json:"key"`
	// Token is the client's web token, and Login the page's address
	// that signs in with it.
	Token string `json:"token"`
	Login string `json:"login"`
}

// Manifest is up.json.
type Manifest struct {
	Tiers   []Entry       `json:"tiers"`
	Clients []ClientEntry `json:"clients"`
	Keys    string        `json:"keys"`
	KEK     string        `json:"kek"`
	Tokens  string        `json:"tokens"` // the web token file
}

// ManifestFile is the name of the manifest in Dir.
const ManifestFile = "up.json"

// ReadManifest reads DIR/up.json.
func ReadManifest(dir string) (*Manifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		return nil, fmt.Errorf("reading the hierarchy's manifest: %w (is `strata up -dir %s` running?)", err, dir)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("reading %s: %w", filepath.Join(dir, ManifestFile), err)
	}
	return &m, nil
}

// Find returns the first tier of role (and group, if not "").
func (m *Manifest) Find(role, group string) (Entry, bool) {
	for _, e := range m.Tiers {
		if e.Role == role && (group == "" || e.Group == group) {
			return e, true
		}
	}
	return Entry{}, false
}

// Group is one edge and its app edge.
type Group struct {
	Name    string
	AppEdge *tier.Server
	Edge    *tier.Server
	Web     *web.HTTPServer // the edge's web page
	Clients []string
}

// Hierarchy is a running hierarchy.
type Hierarchy struct {
	Cloud    *tier.Server
	Groups   []*Group
	Keys     *keyring.Ring
	Manifest *Manifest
	servers  []*tier.Server
}

// GroupName is the name of group i (from 1).
func GroupName(i int) string { return "g" + strconv.Itoa(i) }

func port(base, off int) string {
	if base == 0 {
		return "127.0.0.1:0"
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(base+off))
}

// Start builds and starts the hierarchy and writes Dir/up.json.
func Start(ctx context.Context, cfg Config) (h *Hierarchy, err error) {
	if cfg.Groups <= 0 {
		cfg.Groups = DefaultGroups
	}
	if cfg.Clients <= 0 {
		cfg.Clients = DefaultClients
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	ring, err := keyring.Open(filepath.Join(cfg.Dir, "keys"), log.With("unit", "keys"))
	if err != nil {
		return nil, err
	}
	tokens, err := web.OpenTokens(filepath.Join(ring.Dir(), TokensFile))
	if err != nil {
		return nil, err
	}
	oldTokens := previousTokens(cfg.Dir, tokens)
	h = &Hierarchy{Keys: ring, Manifest: &Manifest{Keys: ring.Dir(), KEK: filepath.Join(ring.Dir(), keyring.KEKFile), Tokens: tokens.Path()}}
	defer func() {
		if err != nil {
			h.Shutdown(context.Background())
			h = nil
		}
	}()
	for i := 1; i <= cfg.Groups; i++ {
		g := GroupName(i)
		purposes := []keyring.Purpose{keyring.LinkA(g), keyring.LinkB(g)}
		for c := 1; c <= cfg.Clients; c++ {
			purposes = append(purposes, keyring.Client(fmt.Sprintf("%s-c%d", g, c)))
		}
		for _, p := range purposes {
			if _, err := ring.Ensure(p); err != nil {
				return h, err
			}
		}
	}
	if cfg.WasmCache == "" {
		cfg.WasmCache = filepath.Join(cfg.Dir, "wasm-cache")
	}
	modules := cfg.Modules
	if modules == nil {
		log.Info("building the sample apps", "dir", filepath.Join(cfg.Dir, "build"))
		if modules, err = apps.Modules(ctx, filepath.Join(cfg.Dir, "build")); err != nil {
			return h, fmt.Errorf("building the sample apps: %w", err)
		}
	}

	c, err := cloud.Start(ctx, cloud.Config{
		Ports: tier.Ports{
			Listen: port(cfg.Port, 0), Local: port(cfg.Port, 1),
			Wrap: ring.Listen("cloud", keyring.MethodB, keyring.CloudPeers, log.With("tier", "cloud", "unit", "link")),
		},
		Data: filepath.Join(cfg.Dir, "cloud"), Limits: cfg.Limits, WasmCache: cfg.WasmCache, CallTimeout: cfg.CallTimeout, Log: log,
	})
	if err != nil {
		return h, err
	}
	h.add(c)
	h.Cloud = c
	h.Manifest.Tiers = append(h.Manifest.Tiers, Entry{Role: "cloud", Name: "cloud", Addr: c.Addr(), Local: c.Local()})
	for _, name := range sortedKeys(modules) {
		if err := deploy(ctx, c.Tier(), name, modules[name]); err != nil {
			return h, err
		}
	}

	for i := 1; i <= cfg.Groups; i++ {
		g := GroupName(i)
		grp := &Group{Name: g}
		an, en := "appedge/"+g, "edge/"+g
		ae, err := appedge.Start(ctx, appedge.Config{
			Name: an,
			Ports: tier.Ports{
				Listen: port(cfg.Port, 10*i), Local: port(cfg.Port, 10*i+1),
				Wrap: ring.Listen(an, keyring.MethodA, keyring.AppEdgePeers(g), log.With("tier", an, "unit", "link")),
			},
			Parent: tier.Parent{Name: "cloud", Addr: c.Addr(), Dial: ring.Dial(an, keyring.LinkB(g)), Timeout: cfg.Timeout},
			Data:   filepath.Join(cfg.Dir, g, "appedge"), Pinned: PinnedApps,
			PullAfter: cfg.PullAfter, Refresh: cfg.Refresh, Limits: cfg.Limits, CallTimeout: cfg.CallTimeout, WasmCache: cfg.WasmCache,
			Log: log,
		})
		if err != nil {
			return h, err
		}
		h.add(ae)
		grp.AppEdge = ae
		gs, err := groupStore(cfg.Store, g)
		if err != nil {
			return h, err
		}
		ed, err := edge.Start(ctx, edge.Config{
			Name: en,
			Ports: tier.Ports{
				Listen: port(cfg.Port, 10*i+2), Local: port(cfg.Port, 10*i+3),
				Wrap: ring.Listen(en, keyring.MethodClient, keyring.EdgePeers, log.With("tier", en, "unit", "link")),
			},
			Parent:      tier.Parent{Name: an, Addr: ae.Addr(), Dial: ring.Dial(en, keyring.LinkA(g)), Timeout: cfg.Timeout},
			Data:        filepath.Join(cfg.Dir, g, "edge"),
			Store:       gs,
			CallTimeout: cfg.CallTimeout, Log: log,
		})
		if err != nil {
			return h, err
		}
		h.add(ed)
		grp.Edge = ed
		grp.Web, err = edge.Web(ctx, ed, web.Config{
			Tokens: tokens, MaxUpload: cfg.MaxUpload, Threshold1: cfg.Threshold1, Threshold2: cfg.Threshold2,
			CallTimeout: cfg.CallTimeout, Log: log,
		}, web.Listen{Addr: port(cfg.Port, 10*i+4)})
		if err != nil {
			return h, err
		}
		h.Manifest.Tiers = append(h.Manifest.Tiers,
			Entry{Role: "appedge", Group: g, Name: an, Addr: ae.Addr(), Local: ae.Local()},
			Entry{Role: "edge", Group: g, Name: en, Addr: ed.Addr(), Local: ed.Local(), Web: grp.Web.URL()})
		for c := 1; c <= cfg.Clients; c++ {
			name := fmt.Sprintf("%s-c%d", g, c)
			grp.Clients = append(grp.Clients, name)
			tok := oldTokens[name]
			if tok == "" {
				if tok, _, err = tokens.Issue(name); err != nil {
					return h, err
				}
			}
			h.Manifest.Clients = append(h.Manifest.Clients, ClientEntry{
				Name: name, Group: g, Edge: ed.Addr(), Key: ring.Path(keyring.Client(name)),
				Token: tok, Login: grp.Web.URL() + "#token=" + tok,
			})
		}
		h.Groups = append(h.Groups, grp)
	}
	// Wait (bounded) for the pinned replicas, so the first call hits.
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	for _, g := range h.Groups {
		if err := g.AppEdge.Tier().WaitHeld(wctx, PinnedApps...); err != nil {
			log.Warn("pinned apps not held yet", "tier", g.AppEdge.Tier().Name(), "err", err)
		}
	}
	b, err := json.MarshalIndent(h.Manifest, "", "  ")
	if err != nil {
		return h, err
	}
	if err := tier.WriteFileAtomic(filepath.Join(cfg.Dir, ManifestFile), append(b, '\n'), 0o600); err != nil {
		return h, err
	}
	return h, nil
}

func (h *Hierarchy) add(s *tier.Server) { h.servers = append(h.servers, s) }

// TokensFile is the name of the web token file in the keyring directory.
const TokensFile = "tokens.json"

// previousTokens are the clients' web tokens that the last run wrote in
// up.json and that are still good, so that a restart keeps the page's
// sign-ins.
func previousTokens(dir string, tokens *web.Tokens) map[string]string {
	out := map[string]string{}
	m, err := ReadManifest(dir)
	if err != nil {
		return out
	}
	for _, c := range m.Clients {
		if name, err := tokens.Check(c.Token); err == nil && name == c.Name {
			out[c.Name] = c.Token
		}
	}
	return out
}

// Shutdown stops every tier, children first.
func (h *Hierarchy) Shutdown(ctx context.Context) error {
	var errs []error
	for i := len(h.servers) - 1; i >= 0; i-- {
		errs = append(errs, h.servers[i].Shutdown(ctx))
	}
	h.servers = nil
	return errors.Join(errs...)
}

// deploy deploys module as name unless the cloud has it already.
func deploy(ctx context.Context, t *tier.Tier, name string, module []byte) error {
	if cur, ok := t.Held(name); ok && cur == wasm.Hash(module) {
		return nil
	}
	_, err := t.Deploy(ctx, name, module)
	return err
}

func sortedKeys(m map[string][]byte) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}
