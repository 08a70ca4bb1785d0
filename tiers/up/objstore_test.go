package up

import (
	"context"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"strata/fs"
	"strata/fs/objstore/s3test"
	"strata/mount/remote"
	"strata/tiers/keyring"
)

// strata up -store: each group's edge keeps its clients' stores in the
// bucket, group gN under the URL's prefix /gN, client C under /gN/C.
func TestUpOnObjectStore(t *testing.T) {
	g := s3test.Start(t, "strata-up")
	g.Env(t)
	h := start(t, Config{Groups: 2, Store: g.URL("strata-up", "stores")})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, grp := range h.Groups {
		c := grp.Clients[0]
		tr, err := remote.Dial(ctx, "tcp", grp.Edge.Addr(), remote.Options{Dial: h.Keys.Dial(c, keyring.Client(c))})
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		if err := storeRoundTrip(ctx, tr, "kept", []byte("in the bucket")); err != nil {
			t.Fatalf("%s: %v", c, err)
		}
		_, h, err := tr.Dir("store").Create(ctx, "stays", fs.WriteOnly, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		h.WriteAt(ctx, []byte("x"), 0)
		if err := h.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	cl, err := g.Client()
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for o := range cl.ListObjects(ctx, "strata-up", minio.ListObjectsOptions{Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		keys = append(keys, o.Key)
	}
	for _, grp := range []string{"g1", "g2"} {
		c := grp + "-c1"
		want := "stores/" + grp + "/" + c + "/stays"
		found := false
		for _, k := range keys {
			found = found || k == want
		}
		if !found {
			t.Errorf("no object %s in the bucket: %q", want, keys)
		}
	}
}
