package objstore

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"strata/fs"
)

func TestBlockCacheBound(t *testing.T) {
	c := newBlockCache(10)
	loads := 0
	load := func(b byte) func(context.Context) ([]byte, error) {
		return func(context.Context) ([]byte, error) {
			loads++
			return bytes.Repeat([]byte{b}, 4), nil
		}
	}
	for i := range int64(5) {
		if b, err := c.get(ctx, blockKey{"k", "e", 20, i}, load(byte(i))); err != nil || b[0] != byte(i) {
			t.Fatalf("block %d: %v %v", i, b, err)
		}
	}
	used, _, misses := c.stats()
	if used > 10 || misses != 5 {
		t.Errorf("used %d bytes (bound 10), %d misses", used, misses)
	}
	// The two most recent stay; the oldest went.
	loads = 0
	c.get(ctx, blockKey{"k", "e", 20, 4}, load(4))
	c.get(ctx, blockKey{"k", "e", 20, 3}, load(3))
	if loads != 0 {
		t.Errorf("recent blocks were evicted")
	}
	c.get(ctx, blockKey{"k", "e", 20, 0}, load(0))
	if loads != 1 {
		t.Errorf("the oldest block was kept")
	}
	// Another version of the object is another block.
	if b, _ := c.get(ctx, blockKey{"k", "e2", 20, 0}, load(9)); b[0] != 9 {
		t.Errorf("another version read from the cache")
	}
	c.forget("k")
	if used, _, _ := c.stats(); used != 0 {
		t.Errorf("forget left %d bytes", used)
	}
	// A block larger than the bound is still returned, and kept alone.
	big := newBlockCache(2)
	if b, err := big.get(ctx, blockKey{"k", "e", 8, 0}, load(7)); err != nil || len(b) != 4 {
		t.Errorf("a block beyond the bound: %v %v", b, err)
	}
}

func TestBlockCacheOneLoad(t *testing.T) {
	c := newBlockCache(1 << 20)
	var loads atomic.Int32
	release := make(chan struct{})
	load := func(context.Context) ([]byte, error) {
		loads.Add(1)
		<-release
		return []byte("block"), nil
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if b, err := c.get(ctx, blockKey{"k", "e", 5, 0}, load); err != nil || string(b) != "block" {
				t.Errorf("get: %q %v", b, err)
			}
		}()
	}
	time.Sleep(50 * time.Millisecond)
	close(release)
	wg.Wait()
	if n := loads.Load(); n != 1 {
		t.Errorf("%d loads of one block, want 1", n)
	}

	// A loader that gives up does not fail the others: one of them loads.
	c2 := newBlockCache(1 << 20)
	gaveUp := make(chan struct{})
	first, cancel := context.WithCancel(ctx)
	go func() {
		c2.get(first, blockKey{"k", "e", 5, 0}, func(ctx context.Context) ([]byte, error) {
			<-gaveUp
			return nil, &fs.Error{Op: "read", Kind: fs.Canceled, Err: context.Canceled}
		})
	}()
	time.Sleep(20 * time.Millisecond)
	done := make(chan error, 1)
	go func() {
		b, err := c2.get(ctx, blockKey{"k", "e", 5, 0}, func(context.Context) ([]byte, error) { return []byte("again"), nil })
		if err == nil && string(b) != "again" {
			err = errors.New("wrong block " + string(b))
		}
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	cancel()
	close(gaveUp)
	if err := <-done; err != nil {
		t.Errorf("a waiter after the loader gave up: %v", err)
	}
}

// TestBlockCacheAhead: a read-ahead's load is one that readers wait for;
// one that fails leaves the block to the reader; and read-ahead keeps to
// its bounds.
func TestBlockCacheAhead(t *testing.T) {
	c := newBlockCache(100)
	k := blockKey{"k", "e", 40, 0}
	call, ok := c.startAhead(k, 10)
	if !ok || call == nil {
		t.Fatalf("startAhead: %v %v", call, ok)
	}
	got := make(chan []byte, 1)
	go func() {
		b, err := c.get(ctx, k, func(context.Context) ([]byte, error) {
			return nil, errors.New("a second load of a block being read ahead")
		})
		if err != nil {
			t.Error(err)
		}
		got <- b
	}()
	time.Sleep(20 * time.Millisecond)
	c.endAhead(k, call, []byte("ahead"), nil)
	if b := <-got; string(b) != "ahead" {
		t.Errorf("the reader got %q, want the block read ahead", b)
	}
	if _, _, misses := c.stats(); misses != 0 {
		t.Errorf("%d misses, want 0", misses)
	}
	if st := c.aheadStats(); st.running != 0 || st.runs != 1 || st.used != 1 || st.aheadBytes != 10 {
		t.Errorf("stats %+v", st)
	}
	// A block cached is not loaded again, but counts as held ahead.
	if call, ok := c.startAhead(k, 10); !ok || call != nil {
		t.Errorf("startAhead of a cached block: %v %v", call, ok)
	}
	// Half the bound, held ahead, is the most.
	if _, ok := c.startAhead(blockKey{"k", "e", 40, 1}, 31); ok {
		t.Errorf("read ahead beyond half the cache's bound")
	}
	c.release(20)
	if st := c.aheadStats(); st.aheadBytes != 0 {
		t.Errorf("%d bytes held ahead after the release", st.aheadBytes)
	}
	// At most aheadRunning loads at once.
	for i := range aheadRunning {
		if call, ok := c.startAhead(blockKey{"r", "e", 100, int64(i)}, 0); !ok || call == nil {
			t.Fatalf("load %d refused", i)
		}
	}
	if _, ok := c.startAhead(blockKey{"r", "e", 100, aheadRunning}, 0); ok {
		t.Errorf("more than %d loads ahead at once", aheadRunning)
	}

	// A read-ahead that fails, whatever the error, leaves the block to
	// the reader, which loads it and reports its own outcome.
	c2 := newBlockCache(100)
	call, _ = c2.startAhead(k, 10)
	done := make(chan error, 1)
	go func() {
		b, err := c2.get(ctx, k, func(context.Context) ([]byte, error) { return []byte("own"), nil })
		if err == nil && string(b) != "own" {
			err = errors.New("wrong block " + string(b))
		}
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	c2.endAhead(k, call, nil, &fs.Error{Op: "read", Kind: fs.IO, Err: errors.New("injected")})
	if err := <-done; err != nil {
		t.Errorf("a reader after a failed read-ahead: %v", err)
	}
	if _, _, misses := c2.stats(); misses != 1 {
		t.Errorf("%d misses, want 1", misses)
	}
}
