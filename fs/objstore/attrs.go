package objstore

import (
	"context"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
)

// AttrTTL is how long, from the end of a listing, the descriptions of the
// files it found stand in for a HEAD of each in Lookup and Stat: `ls -l` of a directory
// costs one listing and a HEAD per file made many at a time, not two HEADs
// per file one after another. A change made through this store is seen at
// once; one made through another edge just after a listing here may be
// seen up to AttrTTL after the listing ended (as NFS caches attributes).
// Open always asks the server (close-to-open).
const AttrTTL = 5 * time.Second

// listHeads is how many HEADs a listing has in flight at once.
const listHeads = 32

// attrs remembers recent descriptions of objects, by key.
type attrs struct {
	mu sync.Mutex
	m  map[string]attrEntry
}

type attrEntry struct {
	oi minio.ObjectInfo
	at time.Time
}

// maxAttrs bounds the entries kept; past it, the stale ones go.
const maxAttrs = 100_000

func (a *attrs) get(key string) (minio.ObjectInfo, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	e, ok := a.m[key]
	if !ok || time.Since(e.at) > AttrTTL {
		return minio.ObjectInfo{}, false
	}
	return e.oi, true
}

func (a *attrs) put(key string, oi minio.ObjectInfo, at time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.m == nil {
		a.m = map[string]attrEntry{}
	}
	if len(a.m) >= maxAttrs {
		for k, e := range a.m {
			if time.Since(e.at) > AttrTTL {
				delete(a.m, k)
			}
		}
		if len(a.m) >= maxAttrs {
			clear(a.m)
		}
	}
	a.m[key] = attrEntry{oi, at}
}

func (a *attrs) forget(key string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.m, key)
}

// headRecent describes the object key from a description at most AttrTTL
// old, or else a HEAD.
func (s *Store) headRecent(ctx context.Context, key string) (minio.ObjectInfo, error) {
	if oi, ok := s.attrs.get(key); ok {
		return oi, nil
	}
	return s.head(ctx, key)
}

// headAll describes the objects keys with HEADs, listHeads at a time, and
// remembers what it learns; an object that cannot be described is left
// out of the result.
func (s *Store) headAll(ctx context.Context, keys []string) map[string]minio.ObjectInfo {
	out := make(map[string]minio.ObjectInfo, len(keys))
	var mu sync.Mutex
	sem := make(chan struct{}, listHeads)
	var wg sync.WaitGroup
	for _, k := range keys {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if oi, err := s.head(ctx, k); err == nil {
				mu.Lock()
				out[k] = oi
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	// The clock starts when the listing is whole: the lookups that
	// follow it (a file manager's, `ls -l`) begin then.
	at := time.Now()
	for k, oi := range out {
		s.attrs.put(k, oi, at)
	}
	return out
}
