package link

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/tink"

	"strata/fs"
)

func TestMethodOf(t *testing.T) {
	for _, m := range methods() {
		h := newKeys(t, m)
		if got, err := MethodOf(h); got != m || err != nil {
			t.Errorf("MethodOf(NewKeyset(%s)) = %s, %v", m, got, err)
		}
	}
	plain, err := keyset.NewHandle(aead.AES256GCMKeyTemplate())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := MethodOf(plain); err == nil || !strings.Contains(err.Error(), "not a PRF-based derivation key") {
		t.Errorf("MethodOf(plain AEAD keyset): %v", err)
	}
	if _, err := NewKeyset("AES128_GCM"); fs.KindOf(err) != fs.Invalid {
		t.Errorf("NewKeyset(AES128_GCM): %v", err)
	}
}

func TestRotateRetire(t *testing.T) {
	k1 := newKeys(t, AES256GCM)
	id1 := primaryID(t, k1)
	if _, err := Rotate(k1, XChaCha20Poly1305); err == nil || !strings.Contains(err.Error(), "keyset uses AES256_GCM") {
		t.Errorf("rotating to another method: %v", err)
	}
	k2, err := Rotate(k1, AES256GCM)
	if err != nil {
		t.Fatal(err)
	}
	if k1.Len() != 1 || k2.Len() != 2 || primaryID(t, k2) == id1 {
		t.Fatalf("Rotate: old keyset has %d keys, new %d, primary %d (was %d)", k1.Len(), k2.Len(), primaryID(t, k2), id1)
	}
	if _, err := Retire(k2, primaryID(t, k2)); err == nil || !strings.Contains(err.Error(), "primary") {
		t.Errorf("retiring the primary: %v", err)
	}
	if _, err := Retire(k2, id1+1); fs.KindOf(err) != fs.NotExist {
		t.Errorf("retiring a missing key: %v", err)
	}
	k3, err := Retire(k2, id1)
	if err != nil {
		t.Fatal(err)
	}
	e, err := findKey(k3, id1)
	if err != nil || e.KeyStatus() != keyset.Disabled {
		t.Fatalf("retired key: %v, %v", e, err)
	}
	if e, _ := findKey(k2, id1); e.KeyStatus() != keyset.Enabled {
		t.Fatal("Retire changed its argument")
	}
}

// TestSessionKeysAgree: both ends derive the same session AEAD from
// different keysets holding the same key, and another salt gives keys
// that do not open its ciphertexts.
func TestSessionKeysAgree(t *testing.T) {
	k1 := newKeys(t, XChaCha20Poly1305)
	k2, err := Rotate(k1, XChaCha20Poly1305)
	if err != nil {
		t.Fatal(err)
	}
	id := primaryID(t, k1)
	salt := bytes.Repeat([]byte{7}, 32)
	a, err := tinkSession(k1, id, salt)
	if err != nil {
		t.Fatal(err)
	}
	b, err := tinkSession(k2, id, salt)
	if err != nil {
		t.Fatal(err)
	}
	ct, err := a.Encrypt([]byte("hello"), []byte("ad"))
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := b.Decrypt(ct, []byte("ad")); err != nil || string(pt) != "hello" {
		t.Fatalf("derived keys disagree: %q, %v", pt, err)
	}
	other, err := tinkSession(k1, id, bytes.Repeat([]byte{8}, 32))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Decrypt(ct, []byte("ad")); err == nil {
		t.Fatal("a session key with another salt opened the ciphertext")
	}
}

// tinkSession is Tink's primitive for a session's keys.
func tinkSession(h *keyset.Handle, keyID uint32, salt []byte) (tink.AEAD, error) {
	s, err := deriveSession(h, keyID, salt)
	if err != nil {
		return nil, err
	}
	return s.tink, nil
}

// TestFramesMatchTink: the frames a link seals are Tink ciphertexts of
// the session key, and Tink's ciphertexts open as frames.
func TestFramesMatchTink(t *testing.T) {
	for _, m := range methods() {
		t.Run(string(m), func(t *testing.T) {
			keys := newKeys(t, m)
			s, err := deriveSession(keys, primaryID(t, keys), make([]byte, 32))
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := s.frames.(*rawFrames); !ok {
				t.Fatalf("frames use %T, not the buffer-reusing path", s.frames)
			}
			msg := bytes.Repeat([]byte("frame "), 10000)
			ad := []byte("associated")
			ct, err := s.frames.seal([]byte("head"), msg, ad)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.HasPrefix(ct, []byte("head")) {
				t.Fatal("seal did not append")
			}
			if pt, err := s.tink.Decrypt(ct[4:], ad); err != nil || !bytes.Equal(pt, msg) {
				t.Fatalf("Tink cannot open a sealed frame: %v", err)
			}
			if _, err := s.tink.Decrypt(ct[4:], []byte("other")); err == nil {
				t.Fatal("Tink opened a frame under other associated data")
			}
			ct, err = s.tink.Encrypt(msg, ad)
			if err != nil {
				t.Fatal(err)
			}
			bad := bytes.Clone(ct)
			bad[len(bad)-1] ^= 1
			if _, err := s.frames.open(nil, bad, ad); err == nil {
				t.Fatal("a damaged ciphertext opened")
			}
			if pt, err := s.frames.open(nil, ct, ad); err != nil || !bytes.Equal(pt, msg) {
				t.Fatalf("a Tink ciphertext does not open as a frame: %v", err)
			}

			// The fallback through Tink's primitive speaks the same format.
			fb := tinkFrames{s.tink}
			if !agree(fb, s.tink) || !agree(s.frames, s.tink) {
				t.Fatal("agree fails")
			}
			ct, err = fb.seal([]byte("head"), msg, ad)
			if err != nil {
				t.Fatal(err)
			}
			room := make([]byte, 0, fb.maxPlain(ct[4:]))
			if pt, err := s.frames.open(nil, bytes.Clone(ct[4:]), ad); err != nil || !bytes.Equal(pt, msg) {
				t.Fatalf("fallback frame does not open: %v", err)
			}
			ct, _ = s.frames.seal(nil, msg, ad)
			if pt, err := fb.open(room, ct, ad); err != nil || !bytes.Equal(pt, msg) || &pt[0] != &room[:1][0] {
				t.Fatalf("fallback cannot open a frame into the given buffer: %v", err)
			}
		})
	}
}

func newKEK(t *testing.T, dir, name string) (string, tink.AEAD) {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := NewKEKFile(path); err != nil {
		t.Fatal(err)
	}
	kek, err := LoadKEK(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, kek
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestKeysetFile(t *testing.T) {
	dir := t.TempDir()
	kekPath, kek := newKEK(t, dir, "kek.json")
	if m := mode(t, kekPath); m != 0o600 {
		t.Errorf("KEK file mode %v, want 0600", m)
	}
	keys, err := Rotate(newKeys(t, XChaCha20Poly1305), XChaCha20Poly1305)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "link-b.keyset")
	if err := WriteKeyset(path, keys, kek, "link-b"); err != nil {
		t.Fatal(err)
	}
	if m := mode(t, path); m != 0o600 {
		t.Errorf("keyset file mode %v, want 0600", m)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(raw, []byte(`"purpose": "link-b"`)) || bytes.Contains(raw, []byte("keyData")) {
		t.Errorf("keyset file is not an encrypted envelope:\n%s", raw)
	}

	t.Run("round-trip", func(t *testing.T) {
		got, err := ReadKeyset(path, kek, "link-b")
		if err != nil {
			t.Fatal(err)
		}
		if got.Len() != 2 || primaryID(t, got) != primaryID(t, keys) {
			t.Fatalf("read %d keys, primary %d; wrote 2, primary %d", got.Len(), primaryID(t, got), primaryID(t, keys))
		}
		// The keys work: a session key derived from each side agrees.
		salt := make([]byte, 32)
		a, err := tinkSession(keys, primaryID(t, keys), salt)
		if err != nil {
			t.Fatal(err)
		}
		b, err := tinkSession(got, primaryID(t, keys), salt)
		if err != nil {
			t.Fatal(err)
		}
		ct, _ := a.Encrypt([]byte("x"), nil)
		if _, err := b.Decrypt(ct, nil); err != nil {
			t.Fatal("keys read back differ from the keys written")
		}
	})
	t.Run("rewrite", func(t *testing.T) {
		if err := WriteKeyset(path, keys, kek, "link-b"); err != nil {
			t.Fatal(err)
		}
		entries, _ := os.ReadDir(dir)
		if len(entries) != 2 {
			t.Errorf("directory holds %d files after a rewrite, want 2 (no temporary left)", len(entries))
		}
	})
	t.Run("wrong-purpose", func(t *testing.T) {
		_, err := ReadKeyset(path, kek, "link-a")
		wantErr(t, err, "wrong purpose", `"link-b"`, `"link-a"`)
		if fs.KindOf(err) != fs.Permission {
			t.Errorf("kind %v", fs.KindOf(err))
		}
	})
	t.Run("purpose-edited", func(t *testing.T) {
		// Changing the clear-text purpose does not help: it is the
		// associated data of the encryption.
		edited := filepath.Join(dir, "edited.keyset")
		if err := os.WriteFile(edited, bytes.Replace(raw, []byte(`"purpose": "link-b"`), []byte(`"purpose": "link-a"`), 1), 0o600); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(edited)
		_, err := ReadKeyset(edited, kek, "link-a")
		wantErr(t, err, "cannot decrypt")
	})
	t.Run("wrong-kek", func(t *testing.T) {
		_, other := newKEK(t, t.TempDir(), "other.json")
		_, err := ReadKeyset(path, other, "link-b")
		wantErr(t, err, "cannot decrypt: wrong key-encryption key")
		if fs.KindOf(err) != fs.Permission {
			t.Errorf("kind %v", fs.KindOf(err))
		}
	})
	t.Run("missing", func(t *testing.T) {
		_, err := ReadKeyset(filepath.Join(dir, "nope"), kek, "link-b")
		if !errors.Is(err, os.ErrNotExist) {
			t.Errorf("missing file: %v", err)
		}
	})
}

func TestKEKFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "kek.json")
	if err := NewKEKFile(path); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(path)
	if err := NewKEKFile(path); !errors.Is(err, os.ErrExist) {
		t.Errorf("second NewKEKFile: %v; want it to refuse", err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Error("NewKEKFile replaced an existing KEK")
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKEK(path); err == nil || fs.KindOf(err) != fs.Permission || !strings.Contains(err.Error(), "0600") {
		t.Errorf("LoadKEK of a readable file: %v", err)
	}
}
