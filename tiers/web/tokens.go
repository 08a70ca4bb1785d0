package web

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	iofs "io/fs"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"strata/fs"
	"strata/tiers/tier"
)

// TokenPrefix begins every token, so that a token pasted in the wrong
// place is recognisable.
const TokenPrefix = "stk_"

// Tokens is the file of the clients' web tokens. Only a hash of each token
// is kept, so the file gives no one a way in. The edge rereads the file
// when it changes, so that `strata token issue` and `strata token revoke`
// take effect at once on a running edge.
type Tokens struct {
	path string

	mu      sync.Mutex
	stamp   fileStamp // of the file as last read
	entries []TokenEntry
}

// TokenEntry is one token as the file keeps it.
type TokenEntry struct {
	Client  string    `json:"client"`
	ID      string    `json:"id"`   // the first 12 hex digits of Hash: names the token in lists
	Hash    string    `json:"hash"` // hex SHA-256 of the token
	Issued  time.Time `json:"issued"`
	Revoked time.Time `json:"revoked,omitzero"`
}

type tokenFile struct {
	Tokens []TokenEntry `json:"tokens"`
}

type fileStamp struct {
	mod  time.Time
	size int64
	ino  uint64
	ok   bool
}

// OpenTokens reads the token file at path; a missing file holds no tokens
// (and is made by the first Issue).
func OpenTokens(path string) (*Tokens, error) {
	t := &Tokens{path: path}
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.reload(); err != nil {
		return nil, err
	}
	return t, nil
}

// Path is where the file is.
func (t *Tokens) Path() string { return t.path }

// reload rereads the file if it changed. t.mu is held.
func (t *Tokens) reload() error {
	fi, err := os.Stat(t.path)
	if errors.Is(err, iofs.ErrNotExist) {
		t.entries, t.stamp = nil, fileStamp{}
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading the token file: %w", err)
	}
	st := stampOf(fi)
	if st == t.stamp {
		return nil
	}
	b, err := os.ReadFile(t.path)
	if err != nil {
		return fmt.Errorf("reading the token file: %w", err)
	}
	var f tokenFile
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("the token file %s is not valid: %w", t.path, err)
	}
	for _, e := range f.Tokens {
		if fs.CheckName("token", e.Client) != nil || len(e.Hash) != 64 {
			return fmt.Errorf("the token file %s has a bad entry for client %q", t.path, e.Client)
		}
	}
	t.entries, t.stamp = f.Tokens, st
	return nil
}

func stampOf(fi os.FileInfo) fileStamp {
	st := fileStamp{mod: fi.ModTime(), size: fi.Size(), ok: true}
	if s, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.ino = s.Ino
	}
	return st
}

// save writes the entries. t.mu is held.
func (t *Tokens) save() error {
	b, err := json.MarshalIndent(tokenFile{Tokens: t.entries}, "", "  ")
	if err != nil {
		return err
	}
	if err := tier.WriteFileAtomic(t.path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("writing the token file: %w", err)
	}
	if fi, err := os.Stat(t.path); err == nil {
		t.stamp = stampOf(fi)
	}
	return nil
}

func hashToken(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

// Issue makes a new token for client and returns it. The token is shown
// this once: the file keeps only its hash.
func (t *Tokens) Issue(client string) (token string, entry TokenEntry, err error) {
	if err := fs.CheckName("issue token", client); err != nil {
		return "", TokenEntry{}, fmt.Errorf("bad client name %q: %w", client, err)
	}
	var r [24]byte
	rand.Read(r[:])
	token = TokenPrefix + base64.RawURLEncoding.EncodeToString(r[:])
	h := hashToken(token)
	entry = TokenEntry{Client: client, ID: h[:12], Hash: h, Issued: time.Now().UTC().Truncate(time.Second)}
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.reload(); err != nil {
		return "", TokenEntry{}, err
	}
	t.entries = append(t.entries, entry)
	if err := t.save(); err != nil {
		t.entries = t.entries[:len(t.entries)-1]
		return "", TokenEntry{}, err
	}
	return token, entry, nil
}

// Revoke revokes every live token of the client named what, or the one
// token whose ID is what, and returns the entries it revoked.
func (t *Tokens) Revoke(what string) ([]TokenEntry, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.reload(); err != nil {
		return nil, err
	}
	now := time.Now().UTC().Truncate(time.Second)
	var done []TokenEntry
	for i := range t.entries {
		e := &t.entries[i]
		if (e.Client == what || e.ID == what) && e.Revoked.IsZero() {
			e.Revoked = now
			done = append(done, *e)
		}
	}
	if len(done) == 0 {
		return nil, fmt.Errorf("no live token of a client or with an id %q", what)
	}
	if err := t.save(); err != nil {
		return nil, err
	}
	return done, nil
}

// List returns every entry, revoked ones included.
func (t *Tokens) List() ([]TokenEntry, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.reload(); err != nil {
		return nil, err
	}
	return append([]TokenEntry(nil), t.entries...), nil
}

// Errors of Check: what a refused client is told.
var (
	ErrNoToken      = errors.New("no token: sign in with the token that `strata token issue` printed for you")
	ErrUnknownToken = errors.New("unknown token: it was never issued here (check that it was copied whole)")
)

// RevokedError is the refusal of a revoked token.
type RevokedError struct{ At time.Time }

func (e *RevokedError) Error() string {
	return "this token was revoked at " + e.At.UTC().Format(time.RFC3339) + ": ask for a new one"
}

// Check returns the client that token belongs to, or why it is refused.
func (t *Tokens) Check(token string) (string, error) {
	if token == "" {
		return "", ErrNoToken
	}
	if !strings.HasPrefix(token, TokenPrefix) || len(token) > 128 {
		return "", ErrUnknownToken
	}
	h := hashToken(token)
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.reload(); err != nil {
		return "", err
	}
	for _, e := range t.entries {
		if subtle.ConstantTimeCompare([]byte(e.Hash), []byte(h)) == 1 {
			if !e.Revoked.IsZero() {
				return "", &RevokedError{At: e.Revoked}
			}
			return e.Client, nil
		}
	}
	return "", ErrUnknownToken
}
