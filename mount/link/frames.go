package link

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"

	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/aead/aesgcm"
	"github.com/tink-crypto/tink-go/v2/aead/xchacha20poly1305"
	"github.com/tink-crypto/tink-go/v2/insecuresecretdataaccess"
	"github.com/tink-crypto/tink-go/v2/keyderivation"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/tink"
	"golang.org/x/crypto/chacha20poly1305"
)

// session is the AEAD of one session, derived from one key of a link
// keyset. tink is the primitive from aead.New on the derived keyset;
// frames seals and opens the same ciphertexts without allocating.
type session struct {
	tink   tink.AEAD
	frames frameAEAD
}

// frameAEAD seals and opens Tink AEAD ciphertexts (output prefix, nonce,
// ciphertext and tag) into caller-provided memory.
type frameAEAD interface {
	// seal appends the ciphertext of plaintext to dst.
	seal(dst, plaintext, ad []byte) ([]byte, error)
	// open appends the plaintext of ct to dst; with dst nil it
	// decrypts in place, reusing ct's memory where it can.
	open(dst, ct, ad []byte) ([]byte, error)
	// maxPlain bounds the length of ct's plaintext.
	maxPlain(ct []byte) int
	// overhead is exactly how much longer a ciphertext is than its
	// plaintext, or -1 if that is not known in advance. Only a frameAEAD
	// with a known overhead is used from several goroutines at once.
	overhead() int
}

// deriveSession derives the session AEAD from the key keyID of h with the
// given salt. Only that key is used, so both ends derive the same keyset
// whatever else their keysets hold. The key must be enabled.
func deriveSession(h *keyset.Handle, keyID uint32, salt []byte) (*session, error) {
	mgr := keyset.NewManagerFromHandle(h)
	if err := mgr.SetPrimary(keyID); err != nil {
		return nil, err
	}
	for i := range h.Len() {
		e, err := h.Entry(i)
		if err != nil {
			return nil, err
		}
		if e.KeyID() != keyID {
			if err := mgr.Delete(e.KeyID()); err != nil {
				return nil, err
			}
		}
	}
	one, err := mgr.Handle()
	if err != nil {
		return nil, err
	}
	d, err := keyderivation.New(one)
	if err != nil {
		return nil, err
	}
	derived, err := d.DeriveKeyset(salt)
	if err != nil {
		return nil, err
	}
	a, err := aead.New(derived)
	if err != nil {
		return nil, err
	}
	return &session{tink: a, frames: framesFor(derived, a)}, nil
}

// framesFor returns a frameAEAD for the derived keyset's primary key.
//
// Tink's AEAD API returns a fresh slice from every call: two 64 KiB
// allocations per frame, whose garbage collection cost more than the
// cipher itself in a small heap. For the key types a link derives, the
// same ciphertexts are made here with the same cipher into reused
// buffers. The result is checked against Tink's primitive both ways;
// should they ever disagree, frames go through Tink's primitive.
func framesFor(derived *keyset.Handle, a tink.AEAD) frameAEAD {
	if raw, err := rawFramesFor(derived); err == nil && agree(raw, a) {
		return raw
	}
	return tinkFrames{a}
}

func rawFramesFor(derived *keyset.Handle) (*rawFrames, error) {
	e, err := derived.Primary()
	if err != nil {
		return nil, err
	}
	switch k := e.Key().(type) {
	case *aesgcm.Key:
		p, ok := k.Parameters().(*aesgcm.Parameters)
		if !ok || p.IVSizeInBytes() != 12 || p.TagSizeInBytes() != 16 {
			return nil, errors.New("unexpected AES-GCM parameters")
		}
		block, err := aes.NewCipher(k.KeyBytes().Data(insecuresecretdataaccess.Token{}))
		if err != nil {
			return nil, err
		}
		c, err := cipher.NewGCM(block)
		if err != nil {
			return nil, err
		}
		return &rawFrames{prefix: k.OutputPrefix(), aead: c}, nil
	case *xchacha20poly1305.Key:
		c, err := chacha20poly1305.NewX(k.KeyBytes().Data(insecuresecretdataaccess.Token{}))
		if err != nil {
			return nil, err
		}
		return &rawFrames{prefix: k.OutputPrefix(), aead: c}, nil
	default:
		return nil, fmt.Errorf("no direct implementation for %T", k)
	}
}

// agree reports whether f and Tink's primitive open each other's
// ciphertexts.
func agree(f frameAEAD, a tink.AEAD) bool {
	msg, ad := []byte("strata link probe"), []byte("probe associated data")
	ct, err := f.seal(nil, msg, ad)
	if err != nil {
		return false
	}
	if pt, err := a.Decrypt(ct, ad); err != nil || !bytes.Equal(pt, msg) {
		return false
	}
	ct, err = a.Encrypt(msg, ad)
	if err != nil {
		return false
	}
	pt, err := f.open(nil, ct, ad)
	return err == nil && bytes.Equal(pt, msg)
}

// rawFrames makes Tink ciphertexts with the derived key's cipher:
// output prefix || random nonce || sealed plaintext and tag.
type rawFrames struct {
	prefix []byte
	aead   cipher.AEAD
}

func (f *rawFrames) seal(dst, plaintext, ad []byte) ([]byte, error) {
	ns := f.aead.NonceSize()
	dst = slices.Grow(dst, len(f.prefix)+ns+len(plaintext)+f.aead.Overhead())
	dst = append(dst, f.prefix...)
	start := len(dst)
	dst = dst[:start+ns]
	nonce := dst[start:]
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return f.aead.Seal(dst, nonce, plaintext, ad), nil
}

func (f *rawFrames) open(dst, ct, ad []byte) ([]byte, error) {
	ns := f.aead.NonceSize()
	if len(ct) < len(f.prefix)+ns+f.aead.Overhead() || !bytes.HasPrefix(ct, f.prefix) {
		return nil, errors.New("malformed ciphertext")
	}
	body := ct[len(f.prefix)+ns:]
	if dst == nil {
		dst = body[:0]
	}
	return f.aead.Open(dst, ct[len(f.prefix):len(f.prefix)+ns], body, ad)
}

func (f *rawFrames) maxPlain(ct []byte) int { return len(ct) - f.overhead() }

func (f *rawFrames) overhead() int {
	return len(f.prefix) + f.aead.NonceSize() + f.aead.Overhead()
}

// tinkFrames goes through Tink's primitive, allocating.
type tinkFrames struct{ a tink.AEAD }

func (f tinkFrames) seal(dst, plaintext, ad []byte) ([]byte, error) {
	ct, err := f.a.Encrypt(plaintext, ad)
	if err != nil {
		return nil, err
	}
	return append(dst, ct...), nil
}

func (f tinkFrames) open(dst, ct, ad []byte) ([]byte, error) {
	pt, err := f.a.Decrypt(ct, ad)
	if err != nil || dst == nil {
		return pt, err
	}
	return append(dst, pt...), nil
}

func (f tinkFrames) maxPlain(ct []byte) int { return len(ct) }

func (f tinkFrames) overhead() int { return -1 }
