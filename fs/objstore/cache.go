package objstore

import (
	"container/list"
	"context"
	"sync"

	"strata/fs"
)

// blockKey names one block of one version of an object. A version is
// known by its ETag and size, so a block never goes stale: a new version
// has new keys, and the old ones age out.
type blockKey struct {
	key   string
	etag  string
	size  int64
	index int64
}

// blockCache is a bounded LRU cache of object blocks, shared by every
// reader of a store. Concurrent misses on one block make one request.
type blockCache struct {
	max int64

	mu      sync.Mutex
	used    int64
	lru     list.List // of *cached, most recent first
	blocks  map[blockKey]*list.Element
	loading map[blockKey]*loadCall
	hits    int64
	misses  int64
}

type cached struct {
	k blockKey
	b []byte
}

type loadCall struct {
	done chan struct{}
	b    []byte
	err  error
}

func newBlockCache(max int64) *blockCache {
	return &blockCache{max: max, blocks: map[blockKey]*list.Element{}, loading: map[blockKey]*loadCall{}}
}

// get returns the block k, loading it with load on a miss. A caller that
// waits for another's load and sees it fail because that caller gave up
// loads the block itself.
func (c *blockCache) get(ctx context.Context, k blockKey, load func(context.Context) ([]byte, error)) ([]byte, error) {
	for {
		c.mu.Lock()
		if e, ok := c.blocks[k]; ok {
			c.lru.MoveToFront(e)
			c.hits++
			b := e.Value.(*cached).b
			c.mu.Unlock()
			return b, nil
		}
		if call, ok := c.loading[k]; ok {
			c.mu.Unlock()
			select {
			case <-call.done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			if call.err == nil {
				return call.b, nil
			}
			if k := fs.KindOf(call.err); (k == fs.Canceled || k == fs.Timeout) && ctx.Err() == nil {
				continue // the loader gave up; try again
			}
			return nil, call.err
		}
		call := &loadCall{done: make(chan struct{})}
		c.loading[k] = call
		c.misses++
		c.mu.Unlock()

		call.b, call.err = load(ctx)
		c.mu.Lock()
		delete(c.loading, k)
		if call.err == nil {
			c.add(k, call.b)
		}
		c.mu.Unlock()
		close(call.done)
		return call.b, call.err
	}
}

// add puts b in the cache and evicts the least recently used blocks
// beyond the bound, keeping at least the newest. c.mu is held.
func (c *blockCache) add(k blockKey, b []byte) {
	c.blocks[k] = c.lru.PushFront(&cached{k, b})
	c.used += int64(len(b))
	for c.used > c.max && c.lru.Len() > 1 {
		e := c.lru.Back()
		old := e.Value.(*cached)
		c.lru.Remove(e)
		delete(c.blocks, old.k)
		c.used -= int64(len(old.b))
	}
}

// forget drops every cached block of the object key.
func (c *blockCache) forget(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for e := c.lru.Front(); e != nil; {
		next := e.Next()
		if old := e.Value.(*cached); old.k.key == key {
			c.lru.Remove(e)
			delete(c.blocks, old.k)
			c.used -= int64(len(old.b))
		}
		e = next
	}
}

// stats reports the cache's use.
func (c *blockCache) stats() (used, hits, misses int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.used, c.hits, c.misses
}
