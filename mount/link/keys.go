package link

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/aead/aesgcm"
	"github.com/tink-crypto/tink-go/v2/aead/xchacha20poly1305"
	"github.com/tink-crypto/tink-go/v2/insecurecleartextkeyset"
	"github.com/tink-crypto/tink-go/v2/keyderivation"
	"github.com/tink-crypto/tink-go/v2/keyderivation/prfbasedkeyderivation"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/prf"
	tinkpb "github.com/tink-crypto/tink-go/v2/proto/tink_go_proto"
	"github.com/tink-crypto/tink-go/v2/tink"

	"strata/fs"
)

// Method names the AEAD that a link's session keys use. Both ends of a
// link must use the same method; a hop offered another one refuses.
type Method string

// The methods a link can use.
const (
	AES256GCM         Method = "AES256_GCM"
	XChaCha20Poly1305 Method = "XCHACHA20_POLY1305"
)

func (m Method) valid() bool { return m == AES256GCM || m == XChaCha20Poly1305 }

// keysetPurposePrefix starts the associated data that binds an encrypted
// keyset file to the link it is for.
const keysetPurposePrefix = "strata link keyset: "

// keysetFileFormat tags the JSON envelope of a keyset file.
const keysetFileFormat = "strata-link-keyset/1"

// template is the key template of a link keyset: an HKDF-SHA256 PRF key
// from which session keys of method m are derived.
func template(m Method) (*tinkpb.KeyTemplate, error) {
	var derived *tinkpb.KeyTemplate
	switch m {
	case AES256GCM:
		derived = aead.AES256GCMKeyTemplate()
	case XChaCha20Poly1305:
		derived = aead.XChaCha20Poly1305KeyTemplate()
	default:
		return nil, fmt.Errorf("unknown method %q (want %s or %s)", m, AES256GCM, XChaCha20Poly1305)
	}
	return keyderivation.CreatePRFBasedKeyTemplate(prf.HKDFSHA256PRFKeyTemplate(), derived)
}

// NewKeyset makes a link keyset with one fresh key (its primary) whose
// session keys use method m.
func NewKeyset(m Method) (*keyset.Handle, error) {
	t, err := template(m)
	if err != nil {
		return nil, fs.E("link keyset", "", fs.Invalid, err)
	}
	h, err := keyset.NewHandle(t)
	if err != nil {
		return nil, fs.E("link keyset", "", fs.Other, err)
	}
	return h, nil
}

// MethodOf reports the method of a link keyset, read from the derived-key
// template of its keys. Every key must derive keys of the same method.
func MethodOf(h *keyset.Handle) (Method, error) {
	if h == nil || h.Len() == 0 {
		return "", fs.E("link keyset", "", fs.Invalid, errors.New("empty keyset"))
	}
	var m Method
	for i := range h.Len() {
		e, err := h.Entry(i)
		if err != nil {
			return "", fs.E("link keyset", "", fs.Invalid, err)
		}
		km, err := keyMethod(e)
		if err != nil {
			return "", fs.E("link keyset", "", fs.Invalid, err)
		}
		if m != "" && km != m {
			return "", fs.E("link keyset", "", fs.Invalid,
				fmt.Errorf("keyset mixes methods %s and %s", m, km))
		}
		m = km
	}
	return m, nil
}

func keyMethod(e *keyset.Entry) (Method, error) {
	k, ok := e.Key().(*prfbasedkeyderivation.Key)
	if !ok {
		return "", fmt.Errorf("key %d is a %T, not a PRF-based derivation key", e.KeyID(), e.Key())
	}
	p, ok := k.Parameters().(*prfbasedkeyderivation.Parameters)
	if !ok {
		return "", fmt.Errorf("key %d has parameters %T", e.KeyID(), k.Parameters())
	}
	switch d := p.DerivedKeyParameters().(type) {
	case *aesgcm.Parameters:
		if d.KeySizeInBytes() == 32 {
			return AES256GCM, nil
		}
		return "", fmt.Errorf("key %d derives AES-GCM keys of %d bytes, not 32", e.KeyID(), d.KeySizeInBytes())
	case *xchacha20poly1305.Parameters:
		return XChaCha20Poly1305, nil
	default:
		return "", fmt.Errorf("key %d derives %T keys, which a link does not use", e.KeyID(), d)
	}
}

// Rotate returns a copy of h with a fresh key of method m added and made
// primary. The old keys stay enabled, so a server holding the result still
// accepts peers that hold only an old key. m must be h's method. Rotate the
// accepting side of a link before the dialing side.
func Rotate(h *keyset.Handle, m Method) (*keyset.Handle, error) {
	have, err := MethodOf(h)
	if err != nil {
		return nil, err
	}
	if have != m {
		return nil, fs.E("link rotate", "", fs.Invalid,
			fmt.Errorf("keyset uses %s, cannot add a %s key", have, m))
	}
	t, err := template(m)
	if err != nil {
		return nil, fs.E("link rotate", "", fs.Invalid, err)
	}
	mgr := keyset.NewManagerFromHandle(h)
	id, err := mgr.Add(t)
	if err != nil {
		return nil, fs.E("link rotate", "", fs.Other, err)
	}
	if err := mgr.SetPrimary(id); err != nil {
		return nil, fs.E("link rotate", "", fs.Other, err)
	}
	out, err := mgr.Handle()
	if err != nil {
		return nil, fs.E("link rotate", "", fs.Other, err)
	}
	return out, nil
}

// Retire returns a copy of h in which the key keyID is disabled: a peer
// whose key it is will be refused ("key ... was retired"). The primary key
// cannot be retired; rotate first.
func Retire(h *keyset.Handle, keyID uint32) (*keyset.Handle, error) {
	e, err := findKey(h, keyID)
	if err != nil {
		return nil, fs.E("link retire", "", fs.NotExist, err)
	}
	if e.IsPrimary() {
		return nil, fs.E("link retire", "", fs.Invalid,
			fmt.Errorf("key %d is the primary key; rotate before retiring it", keyID))
	}
	mgr := keyset.NewManagerFromHandle(h)
	if err := mgr.Disable(keyID); err != nil {
		return nil, fs.E("link retire", "", fs.Other, err)
	}
	out, err := mgr.Handle()
	if err != nil {
		return nil, fs.E("link retire", "", fs.Other, err)
	}
	return out, nil
}

func findKey(h *keyset.Handle, keyID uint32) (*keyset.Entry, error) {
	for i := range h.Len() {
		e, err := h.Entry(i)
		if err != nil {
			return nil, err
		}
		if e.KeyID() == keyID {
			return e, nil
		}
	}
	return nil, fmt.Errorf("no key %d in the keyset", keyID)
}

// primaryKeyID is the ID of h's primary key.
func primaryKeyID(h *keyset.Handle) (uint32, error) {
	e, err := h.Primary()
	if err != nil {
		return 0, err
	}
	return e.KeyID(), nil
}

// keysetFile is the JSON envelope of a keyset file. Purpose and Method
// are in the clear so that a mismatch gets a plain answer; the purpose is
// also the associated data of the encryption, so editing it does not help.
type keysetFile struct {
	Format  string          `json:"format"`
	Purpose string          `json:"purpose"`
	Method  Method          `json:"method"`
	Keyset  json.RawMessage `json:"keyset"`
}

// WriteKeyset writes h to path encrypted under kek, with associated data
// naming purpose, the link the keyset is for ("link-a", "client:alice").
// The write is atomic (temporary file, fsync, rename) and the file has
// mode 0600.
func WriteKeyset(path string, h *keyset.Handle, kek tink.AEAD, purpose string) error {
	const op = "link write keyset"
	if purpose == "" {
		return fs.E(op, path, fs.Invalid, errors.New("empty purpose"))
	}
	if kek == nil || h == nil {
		return fs.E(op, path, fs.Invalid, errors.New("nil keyset or key-encryption key"))
	}
	m, err := MethodOf(h)
	if err != nil {
		return fs.E(op, path, fs.Invalid, err)
	}
	var enc bytes.Buffer
	if err := h.WriteWithAssociatedData(keyset.NewJSONWriter(&enc), kek, []byte(keysetPurposePrefix+purpose)); err != nil {
		return fs.E(op, path, fs.Other, fmt.Errorf("encrypting keyset: %w", err))
	}
	data, err := json.MarshalIndent(keysetFile{Format: keysetFileFormat, Purpose: purpose, Method: m, Keyset: enc.Bytes()}, "", "  ")
	if err != nil {
		return fs.E(op, path, fs.Other, err)
	}
	if err := writeFileAtomic(path, append(data, '\n'), true); err != nil {
		return fs.E(op, path, fs.Other, err)
	}
	return nil
}

// ReadKeyset reads a keyset file written by WriteKeyset for the same
// purpose under the same key-encryption key. A file for another purpose,
// or one that kek cannot decrypt, is a Permission error that says which.
func ReadKeyset(path string, kek tink.AEAD, purpose string) (*keyset.Handle, error) {
	const op = "link read keyset"
	if kek == nil {
		return nil, fs.E(op, path, fs.Invalid, errors.New("nil key-encryption key"))
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fs.E(op, path, fs.Other, err)
	}
	var f keysetFile
	if err := json.Unmarshal(data, &f); err != nil || f.Format != keysetFileFormat {
		return nil, fs.E(op, path, fs.Invalid, errors.New("not a link keyset file"))
	}
	if f.Purpose != purpose {
		return nil, fs.E(op, path, fs.Permission,
			fmt.Errorf("wrong purpose: the keyset is for %q, not %q", f.Purpose, purpose))
	}
	h, err := keyset.ReadWithAssociatedData(keyset.NewJSONReader(bytes.NewReader(f.Keyset)), kek, []byte(keysetPurposePrefix+purpose))
	if err != nil {
		return nil, fs.E(op, path, fs.Permission,
			errors.New("cannot decrypt: wrong key-encryption key, or the file was altered"))
	}
	if _, err := MethodOf(h); err != nil {
		return nil, fs.E(op, path, fs.Invalid, err)
	}
	return h, nil
}

// NewKEKFile writes a fresh AES256-GCM key-encryption key to path as a
// cleartext Tink keyset in JSON, mode 0600. It refuses to replace an
// existing file, since that would orphan every keyset encrypted under it.
//
// The KEK file is the one secret to guard: whoever reads it can decrypt
// every keyset file written under it. A KMS-held key (any tink.AEAD) can
// replace it without changing WriteKeyset or ReadKeyset.
func NewKEKFile(path string) error {
	const op = "link new kek"
	h, err := keyset.NewHandle(aead.AES256GCMKeyTemplate())
	if err != nil {
		return fs.E(op, path, fs.Other, err)
	}
	var buf bytes.Buffer
	if err := insecurecleartextkeyset.Write(h, keyset.NewJSONWriter(&buf)); err != nil {
		return fs.E(op, path, fs.Other, err)
	}
	if err := writeFileAtomic(path, buf.Bytes(), false); err != nil {
		return fs.E(op, path, fs.Other, err)
	}
	return nil
}

// LoadKEK reads a key-encryption key written by NewKEKFile. A file that
// group or others may read is refused.
func LoadKEK(path string) (tink.AEAD, error) {
	const op = "link load kek"
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fs.E(op, path, fs.Other, err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fs.E(op, path, fs.Permission,
			fmt.Errorf("key-encryption key file has mode %v; it must be 0600", fi.Mode().Perm()))
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fs.E(op, path, fs.Other, err)
	}
	h, err := insecurecleartextkeyset.Read(keyset.NewJSONReader(bytes.NewReader(data)))
	if err != nil {
		return nil, fs.E(op, path, fs.Invalid, fmt.Errorf("not a key-encryption key file: %w", err))
	}
	a, err := aead.New(h)
	if err != nil {
		return nil, fs.E(op, path, fs.Invalid, fmt.Errorf("not an AEAD keyset: %w", err))
	}
	return a, nil
}

// writeFileAtomic writes data to a temporary file in path's directory
// with mode 0600, syncs it, and moves it to path: by rename when replace
// is set, else by a hard link that fails if path exists. The directory is
// synced afterwards so the name survives a crash.
func writeFileAtomic(path string, data []byte, replace bool) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	name := tmp.Name()
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(name)
		}
	}()
	if err = tmp.Chmod(0o600); err != nil {
		return err
	}
	if _, err = tmp.Write(data); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	if replace {
		if err = os.Rename(name, path); err != nil {
			return err
		}
	} else {
		if err = os.Link(name, path); err != nil {
			return err
		}
		os.Remove(name)
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
