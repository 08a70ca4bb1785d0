package repo

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"
)

// manifestFormat is the version of the manifest's layout.
const manifestFormat = 1

// record is an app as the manifest holds it.
type record struct {
	ID       string    `json:"id"`
	Hash     string    `json:"hash"`
	Size     int64     `json:"size"`
	Version  uint64    `json:"version"`
	Deployed time.Time `json:"deployed"`
	Pinned   bool      `json:"pinned"`
	// Limits are the app's own limits, kept with its record so that every
	// repo that shares the manifest runs it under the same ones.
	Limits Limits `json:"limits,omitzero"`
	// Object is the name of the module in a repo on an object store
	// (see objectName); "" in a directory, where the name is the ID's.
	Object string `json:"object,omitempty"`
}

func (rec record) app() App {
	return App{ID: rec.ID, Hash: rec.Hash, Size: rec.Size, Version: rec.Version, Deployed: rec.Deployed, Pinned: rec.Pinned, Limits: rec.Limits}
}

func (rec record) withModule(mod []byte) App {
	a := rec.app()
	a.Module = mod
	return a
}

// manifest is the content of manifest.json.
type manifest struct {
	Format int `json:"format"`
	// Seq counts the commits of a repo on an object store (0 in a
	// directory): each is one more than the manifest it replaced, so of
	// two manifests the newer is known (the backup's is never put back).
	Seq     uint64            `json:"seq,omitempty"`
	Apps    []record          `json:"apps"`
	Removed map[string]uint64 `json:"removed,omitempty"`
}

func (m manifest) encode() []byte {
	if m.Apps == nil {
		m.Apps = []record{}
	}
	if len(m.Removed) == 0 {
		m.Removed = nil
	}
	b, err := json.MarshalIndent(m, "", "\t")
	if err != nil {
		panic(err) // no field can fail to encode
	}
	return append(b, '\n')
}

func decodeManifest(b []byte) (manifest, error) {
	var m manifest
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return manifest{}, err
	}
	if m.Format != manifestFormat {
		return manifest{}, fmt.Errorf("format %d, want %d", m.Format, manifestFormat)
	}
	seen := map[string]bool{}
	for _, rec := range m.Apps {
		switch {
		case !okID(rec.ID):
			return manifest{}, fmt.Errorf("bad app ID %.72q", rec.ID)
		case seen[rec.ID]:
			return manifest{}, fmt.Errorf("app %s twice", rec.ID)
		case !validHash(rec.Hash) || strings.ToLower(rec.Hash) != rec.Hash:
			return manifest{}, fmt.Errorf("app %s: bad hash %.80q", rec.ID, rec.Hash)
		case rec.Size <= 0:
			return manifest{}, fmt.Errorf("app %s: bad size %d", rec.ID, rec.Size)
		case rec.Version == 0:
			return manifest{}, fmt.Errorf("app %s: version 0", rec.ID)
		case rec.Object != "" && !validObject(rec.Object, rec.Hash):
			return manifest{}, fmt.Errorf("app %s: bad object name %.120q", rec.ID, rec.Object)
		}
		seen[rec.ID] = true
	}
	for id := range m.Removed {
		if !okID(id) {
			return manifest{}, fmt.Errorf("bad removed app ID %.72q", id)
		}
	}
	if m.Removed == nil {
		m.Removed = map[string]uint64{}
	}
	return m, nil
}

// moduleDir is the folder of the module objects in a repo on an object
// store.
const moduleDir = "modules/"

// objectName is a new name for a module of the given hash on an object
// store: modules/HASH-UPLOAD.wasm, where UPLOAD is random. Each upload
// has a name of its own, so a name is never written with other bytes
// (only rewritten with the same ones, by a repair), and a module object
// that no record names any more is never named again.
func objectName(hash string) string {
	return moduleDir + hash + "-" + strconv.FormatUint(rand.Uint64(), 36) + ".wasm"
}

// validObject reports whether name is an objectName of hash.
func validObject(name, hash string) bool {
	rest, ok := strings.CutPrefix(name, moduleDir+hash+"-")
	if !ok {
		return false
	}
	up, ok := strings.CutSuffix(rest, ".wasm")
	if !ok || up == "" || len(up) > 13 {
		return false
	}
	for i := 0; i < len(up); i++ {
		if c := up[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'z') {
			return false
		}
	}
	return true
}

// objectHash is the hash an objectName names, or "".
func objectHash(name string) string {
	rest, ok := strings.CutPrefix(name, moduleDir)
	if !ok {
		return ""
	}
	h, _, ok := strings.Cut(rest, "-")
	if !ok || !validHash(h) || strings.ToLower(h) != h || !validObject(name, h) {
		return ""
	}
	return h
}
