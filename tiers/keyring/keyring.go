// Package keyring keeps a deployment's link keysets in one directory,
// each encrypted under the key-encryption key (KEK) with associated data
// naming the link it is for:
//
//	DIR/kek.json                 the KEK (cleartext: the one file to guard)
//	DIR/link-a-<group>.keyset    link A, edge <-> app edge  (AES-256-GCM)
//	DIR/link-b-<group>.keyset    link B, app edge <-> cloud (XChaCha20-Poly1305)
//	DIR/clients/<name>.keyset    a client <-> its edge      (AES-256-GCM)
//
// Keysets are read again when their file changes, so a rotation (a new
// key made primary, the old ones kept) reaches new handshakes without a
// restart and without dropping the links that are up.
package keyring

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/tink"

	"strata/fs"
	"strata/mount/link"
)

// The methods of the links: A and B differ, as the design asks.
const (
	MethodA      = link.AES256GCM
	MethodB      = link.XChaCha20Poly1305
	MethodClient = link.AES256GCM
)

// KEKFile is the name of the key-encryption key in a keyring directory.
const KEKFile = "kek.json"

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,63}$`)

// CheckName reports whether name can name a group or a client.
func CheckName(what, name string) error {
	if !nameRE.MatchString(name) {
		return &fs.Error{Op: "check name", Path: name, Kind: fs.Invalid, Err: fmt.Errorf("a %s name is 1 to 64 of [a-z0-9_-], starting with a letter or digit", what)}
	}
	return nil
}

// Purpose names what a keyset is for; it is the associated data of its
// encryption and decides its file name.
type Purpose string

// LinkA is the purpose of group's edge <-> app edge keyset.
func LinkA(group string) Purpose { return Purpose("link-a/" + group) }

// LinkB is the purpose of group's app edge <-> cloud keyset.
func LinkB(group string) Purpose { return Purpose("link-b/" + group) }

// Client is the purpose of a client's keyset.
func Client(name string) Purpose { return Purpose("client/" + name) }

// Method is the AEAD method of a purpose's link.
func (p Purpose) Method() link.Method {
	switch {
	case strings.HasPrefix(string(p), "link-a/"):
		return MethodA
	case strings.HasPrefix(string(p), "link-b/"):
		return MethodB
	}
	return MethodClient
}

func (p Purpose) file() string {
	kind, name, _ := strings.Cut(string(p), "/")
	if kind == "client" {
		return filepath.Join("clients", name+".keyset")
	}
	return kind + "-" + name + ".keyset"
}

func (p Purpose) check() error {
	kind, name, ok := strings.Cut(string(p), "/")
	if !ok || (kind != "link-a" && kind != "link-b" && kind != "client") {
		return &fs.Error{Op: "keyset", Path: string(p), Kind: fs.Invalid, Err: errors.New("a keyset is for link-a/GROUP, link-b/GROUP or client/NAME")}
	}
	return CheckName(kind, name)
}

// Ring is a keyring directory.
type Ring struct {
	dir string
	kek tink.AEAD
	log *slog.Logger

	mu    sync.Mutex
	cache map[Purpose]cached
}

type cached struct {
	mtime time.Time
	size  int64
	h     *keyset.Handle
}

// Open opens the keyring in dir, making the directory and its KEK if
// they do not exist yet.
func Open(dir string, log *slog.Logger) (*Ring, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(filepath.Join(dir, "clients"), 0o700); err != nil {
		return nil, fmt.Errorf("keyring: %w", err)
	}
	kp := filepath.Join(dir, KEKFile)
	if _, err := os.Stat(kp); errors.Is(err, os.ErrNotExist) {
		if err := link.NewKEKFile(kp); err != nil {
			return nil, fmt.Errorf("keyring: making the key-encryption key: %w", err)
		}
		log.Info("key-encryption key made", "file", kp)
	}
	kek, err := link.LoadKEK(kp)
	if err != nil {
		return nil, fmt.Errorf("keyring: loading the key-encryption key %s: %w", kp, err)
	}
	return &Ring{dir: dir, kek: kek, log: log, cache: map[Purpose]cached{}}, nil
}

// Dir is the keyring's directory.
func (r *Ring) Dir() string { return r.dir }

// Path is the file of purpose's keyset.
func (r *Ring) Path(p Purpose) string { return filepath.Join(r.dir, p.file()) }

// Ensure makes purpose's keyset if it does not exist; it reports whether
// it made one.
func (r *Ring) Ensure(p Purpose) (bool, error) {
	if err := p.check(); err != nil {
		return false, err
	}
	if _, err := os.Stat(r.Path(p)); err == nil {
		return false, nil
	}
	h, err := link.NewKeyset(p.Method())
	if err != nil {
		return false, err
	}
	if err := link.WriteKeyset(r.Path(p), h, r.kek, string(p)); err != nil {
		return false, err
	}
	r.log.Info("keyset made", "purpose", p, "method", p.Method(), "file", r.Path(p))
	return true, nil
}

// Keyset returns purpose's keyset, read again if its file changed.
func (r *Ring) Keyset(p Purpose) (*keyset.Handle, error) {
	if err := p.check(); err != nil {
		return nil, err
	}
	path := r.Path(p)
	st, err := os.Stat(path)
	if err != nil {
		return nil, &fs.Error{Op: "read keyset", Path: string(p), Kind: fs.KindOf(err), Err: fmt.Errorf("no keyset for %s in %s", p, r.dir)}
	}
	r.mu.Lock()
	c, ok := r.cache[p]
	r.mu.Unlock()
	if ok && c.mtime.Equal(st.ModTime()) && c.size == st.Size() {
		return c.h, nil
	}
	h, err := link.ReadKeyset(path, r.kek, string(p))
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.cache[p] = cached{mtime: st.ModTime(), size: st.Size(), h: h}
	r.mu.Unlock()
	return h, nil
}

// Rotate adds a new key to purpose's keyset and makes it primary; the old
// keys stay valid until retired.
func (r *Ring) Rotate(p Purpose) (uint32, error) {
	h, err := r.Keyset(p)
	if err != nil {
		return 0, err
	}
	nh, err := link.Rotate(h, p.Method())
	if err != nil {
		return 0, err
	}
	if err := link.WriteKeyset(r.Path(p), nh, r.kek, string(p)); err != nil {
		return 0, err
	}
	id := nh.KeysetInfo().GetPrimaryKeyId()
	r.log.Info("keyset rotated", "purpose", p, "primary", id)
	return id, nil
}

// Retire removes key id (not the primary) from purpose's keyset: peers
// still using it are refused from then on.
func (r *Ring) Retire(p Purpose, id uint32) error {
	h, err := r.Keyset(p)
	if err != nil {
		return err
	}
	nh, err := link.Retire(h, id)
	if err != nil {
		return err
	}
	return link.WriteKeyset(r.Path(p), nh, r.kek, string(p))
}

// Keys lists the key IDs of purpose's keyset, primary first.
func (r *Ring) Keys(p Purpose) ([]uint32, error) {
	h, err := r.Keyset(p)
	if err != nil {
		return nil, err
	}
	info := h.KeysetInfo()
	ids := []uint32{info.GetPrimaryKeyId()}
	for _, k := range info.GetKeyInfo() {
		if k.GetKeyId() != info.GetPrimaryKeyId() {
			ids = append(ids, k.GetKeyId())
		}
	}
	return ids, nil
}

// Clients lists the clients that have a keyset.
func (r *Ring) Clients() ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(r.dir, "clients"))
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		if n, ok := strings.CutSuffix(e.Name(), ".keyset"); ok && CheckName("client", n) == nil {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names, nil
}

// keysFn returns p's keyset for a dialing side: the last good one if the
// file cannot be read now.
func (r *Ring) keysFn(p Purpose) func() *keyset.Handle {
	var mu sync.Mutex
	var last *keyset.Handle
	return func() *keyset.Handle {
		h, err := r.Keyset(p)
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			r.log.Warn("reading a keyset failed; using the last one read", "purpose", p, "err", err)
			return last
		}
		last = h
		return h
	}
}

// Dial returns a dial function that opens a link as name with p's keyset.
func (r *Ring) Dial(name string, p Purpose) func(ctx context.Context, network, addr string) (net.Conn, error) {
	cfg := link.Config{Name: name, Method: p.Method(), Keys: r.keysFn(p)}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		return link.Dial(ctx, network, addr, cfg)
	}
}

// StaticDial returns a dial function that opens a link as name with the
// keyset h as it is, not as its file is now (a peer that kept an old copy).
func StaticDial(name string, m link.Method, h *keyset.Handle) func(ctx context.Context, network, addr string) (net.Conn, error) {
	cfg := link.Config{Name: name, Method: m, Keys: func() *keyset.Handle { return h }}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		return link.Dial(ctx, network, addr, cfg)
	}
}

// Listen returns a function that makes a listener accept only peers that
// pass the link handshake as name: purposeOf maps a peer's name to the
// purpose of the keyset it must hold (an error refuses the peer).
func (r *Ring) Listen(name string, m link.Method, purposeOf func(peer string) (Purpose, error), log *slog.Logger) func(net.Listener) net.Listener {
	cfg := link.ServerConfig{Name: name, Method: m, Keys: func(peer string) (*keyset.Handle, error) {
		p, err := purposeOf(peer)
		if err != nil {
			return nil, err
		}
		return r.Keyset(p)
	}}
	return func(ln net.Listener) net.Listener { return link.NewListener(ln, cfg, log) }
}

// CloudPeers admits the app edge of any group, on link B.
func CloudPeers(peer string) (Purpose, error) {
	g, ok := strings.CutPrefix(peer, "appedge/")
	if !ok || CheckName("group", g) != nil {
		return "", fmt.Errorf("unknown peer %q: the cloud admits app edges (appedge/GROUP)", peer)
	}
	return LinkB(g), nil
}

// AppEdgePeers admits the edge of group, on link A.
func AppEdgePeers(group string) func(string) (Purpose, error) {
	return func(peer string) (Purpose, error) {
		if peer != "edge/"+group {
			return "", fmt.Errorf("unknown peer %q: app edge %s admits edge/%s", peer, group, group)
		}
		return LinkA(group), nil
	}
}

// EdgePeers admits any client with a keyset.
func EdgePeers(peer string) (Purpose, error) {
	if err := CheckName("client", peer); err != nil {
		return "", fmt.Errorf("unknown peer %q: %w", peer, err)
	}
	return Client(peer), nil
}

// FileKeys returns a function giving the keyset in the file at path (for
// a peer with one keyset of its own, outside a keyring directory): it is
// read again when the file changes, and the last good one is kept while
// the file cannot be read. The first read must succeed.
func FileKeys(path string, kek tink.AEAD, p Purpose, log *slog.Logger) (func() *keyset.Handle, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var (
		mu   sync.Mutex
		last cached
	)
	read := func() (*keyset.Handle, error) {
		mu.Lock()
		defer mu.Unlock()
		st, err := os.Stat(path)
		if err == nil && last.h != nil && st.ModTime().Equal(last.mtime) && st.Size() == last.size {
			return last.h, nil
		}
		if err == nil {
			var h *keyset.Handle
			if h, err = link.ReadKeyset(path, kek, string(p)); err == nil {
				last = cached{mtime: st.ModTime(), size: st.Size(), h: h}
				return h, nil
			}
		}
		if last.h == nil {
			return nil, err
		}
		log.Warn("reading a keyset failed; using the last one read", "file", path, "err", err)
		return last.h, nil
	}
	if _, err := read(); err != nil {
		return nil, fmt.Errorf("reading the keyset %s: %w", path, err)
	}
	return func() *keyset.Handle { h, _ := read(); return h }, nil
}
