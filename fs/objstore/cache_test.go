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
