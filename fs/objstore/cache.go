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
// reader of a store. Concurrent misses on one block make one request, and
// a read of a block that a read-ahead is loading waits for that load.
//
// The cache also bounds the store's read-ahead (ahead.go): at most
// aheadRunning blocks loading in the background at once, and at most half
// its bound of data held ahead of readers (loaded or loading for them, not
// read yet), so that read-ahead never evicts the whole cache.
type blockCache struct {
	max int64

	mu      sync.Mutex
	used    int64
	lru     list.List // of *cached, most recent first
	blocks  map[blockKey]*list.Element
	loading map[blockKey]*loadCall
	hits    int64
	misses  int64 // loads by readers

	ahead     int64 // bytes that handles hold ahead of their readers
	running   int   // read-ahead loads in progress
	aheadRuns int64 // read-ahead loads started
	aheadUsed int64 // blocks read that a read-ahead loaded
}

type cached struct {
	k     blockKey
	b     []byte
	ahead bool // loaded ahead and not read since
}

type loadCall struct {
	done  chan struct{}
	b     []byte
	err   error
	ahead bool // a read-ahead's load
}

// aheadRunning bounds the blocks of a store that read-ahead loads at
// once.
const aheadRunning = 32

func newBlockCache(max int64) *blockCache {
	return &blockCache{max: max, blocks: map[blockKey]*list.Element{}, loading: map[blockKey]*loadCall{}}
}

// get returns the block k, loading it with load on a miss. A caller that
// waits for another's load and sees it fail because that caller gave up,
// or because it was a read-ahead's, loads the block itself.
func (c *blockCache) get(ctx context.Context, k blockKey, load func(context.Context) ([]byte, error)) ([]byte, error) {
	for {
		c.mu.Lock()
		if e, ok := c.blocks[k]; ok {
			c.lru.MoveToFront(e)
			c.hits++
			ce := e.Value.(*cached)
			if ce.ahead {
				ce.ahead = false
				c.aheadUsed++
			}
			c.mu.Unlock()
			return ce.b, nil
		}
		if call, ok := c.loading[k]; ok {
			c.mu.Unlock()
			select {
			case <-call.done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			if call.err == nil {
				if call.ahead {
					c.readAhead1(k)
				}
				return call.b, nil
			}
			if ctx.Err() == nil {
				if call.ahead {
					continue // a read-ahead failed: load it here, and report
				}
				if k := fs.KindOf(call.err); k == fs.Canceled || k == fs.Timeout {
					continue // the loader gave up; try again
				}
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
			c.add(k, call.b, false)
		}
		c.mu.Unlock()
		close(call.done)
		return call.b, call.err
	}
}

// readAhead1 counts a read of the block k that waited for a read-ahead's
// load of it.
func (c *blockCache) readAhead1(k blockKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.aheadUsed++
	if e, ok := c.blocks[k]; ok {
		e.Value.(*cached).ahead = false
	}
}

// add puts b in the cache and evicts the least recently used blocks
// beyond the bound, keeping at least the newest. c.mu is held.
func (c *blockCache) add(k blockKey, b []byte, ahead bool) {
	c.blocks[k] = c.lru.PushFront(&cached{k, b, ahead})
	c.used += int64(len(b))
	for c.used > c.max && c.lru.Len() > 1 {
		e := c.lru.Back()
		old := e.Value.(*cached)
		c.lru.Remove(e)
		delete(c.blocks, old.k)
		c.used -= int64(len(old.b))
	}
}

// startAhead counts n bytes of the block k as held ahead of a reader, and
// if k is neither cached nor being loaded, registers a read-ahead's load
// of it, which the caller makes and ends with endAhead; readers of k wait
// for it meanwhile. It returns ok false, and counts nothing, if the store
// already has aheadRunning such loads in progress or holds half the
// cache's bound ahead of its readers.
func (c *blockCache) startAhead(k blockKey, n int64) (call *loadCall, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.running >= aheadRunning || c.ahead+n > c.max/2 {
		return nil, false
	}
	c.ahead += n
	if _, ok := c.blocks[k]; ok {
		return nil, true
	}
	if _, ok := c.loading[k]; ok {
		return nil, true
	}
	call = &loadCall{done: make(chan struct{}), ahead: true}
	c.loading[k] = call
	c.running++
	c.aheadRuns++
	return call, true
}

// endAhead ends the read-ahead's load call of the block k, which loaded b
// or failed with err. A failure is not kept: the next reader of k loads
// it.
func (c *blockCache) endAhead(k blockKey, call *loadCall, b []byte, err error) {
	c.mu.Lock()
	call.b, call.err = b, err
	delete(c.loading, k)
	c.running--
	if err == nil {
		c.add(k, b, true)
	}
	c.mu.Unlock()
	close(call.done)
}

// release stops counting n bytes as held ahead of a reader: the reader
// has read them, or gave up reading in order.
func (c *blockCache) release(n int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ahead -= n
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

// aheadStats reports the read-ahead: the loads in progress, those
// started, the blocks read that they loaded, and the bytes held ahead of
// readers.
type aheadStats struct {
	running    int
	runs, used int64
	aheadBytes int64
}

func (c *blockCache) aheadStats() aheadStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return aheadStats{running: c.running, runs: c.aheadRuns, used: c.aheadUsed, aheadBytes: c.ahead}
}
