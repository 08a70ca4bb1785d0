package wasm

import (
	"bytes"
	"container/list"
	"context"
	"runtime"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/experimental"

	"strata/fs"
)

// compiled is one module, compiled or being compiled. Runtime.mu guards
// its fields; cm, minPages and err are written once, before ready is
// closed, and read without the lock after it is.
type compiled struct {
	hash     string
	ready    chan struct{} // closed when the compilation ends
	cm       wazero.CompiledModule
	minPages uint32 // the memory's initial size
	err      error

	refs    int           // runs and waiters holding it
	elem    *list.Element // its place in the LRU list; nil while compiling or once evicted
	evicted bool          // no longer in the cache: close it when refs drops to 0
}

// modules is the in-memory cache of compiled modules: a map by hash and a
// list in order of use, the most recent first. A module being compiled is
// in the map, so concurrent first runs share one compilation, but not in
// the list, so it cannot be evicted.
type modules struct {
	max    int
	byHash map[string]*compiled
	lru    list.List
}

func newModules(max int) modules {
	return modules{max: max, byHash: make(map[string]*compiled)}
}

// acquire returns the compiled form of module, compiling it if no run
// holds it already, and counts the caller as a holder; release undoes
// that. A caller whose ctx ends stops waiting, while the compilation goes
// on for the others.
func (r *Runtime) acquire(ctx context.Context, hash string, module []byte) (*compiled, error) {
	r.mu.Lock()
	m := r.mods.byHash[hash]
	switch {
	case m == nil:
		m = &compiled{hash: hash, ready: make(chan struct{})}
		r.mods.byHash[hash] = m
		r.wg.Add(1)
		// The caller may reuse its slice once it stops waiting.
		go r.compile(m, bytes.Clone(module))
	case m.elem != nil:
		r.mods.lru.MoveToFront(m.elem)
	}
	m.refs++
	r.mu.Unlock()

	select {
	case <-m.ready:
	case <-ctx.Done():
		r.release(m)
		return nil, ctxError("compile", ctx)
	}
	if m.err != nil {
		r.release(m)
		return nil, m.err
	}
	return m, nil
}

// compile fills m, then caches it or, if it failed, forgets it so that a
// later run tries again.
func (r *Runtime) compile(m *compiled, module []byte) {
	defer r.wg.Done()
	ctx := r.closing
	start := time.Now()
	cm, err := r.rt.CompileModule(experimental.WithCompilationWorkers(ctx, runtime.GOMAXPROCS(0)), module)
	if err != nil {
		err = compileError(err)
	} else if cerr := checkCommand(cm, r.wasi); cerr != nil {
		cm.Close(ctx)
		cm = nil
		err = &fs.Error{Op: "compile", Kind: fs.Invalid, Err: cerr}
	}
	if err == nil {
		r.log.Info("compiled a module", "hash", short(m.hash), "bytes", len(module), "took", time.Since(start).Round(time.Millisecond))
	} else {
		r.log.Info("module refused", "hash", short(m.hash), "err", err)
	}

	var evicted []*compiled
	r.mu.Lock()
	if err != nil {
		m.err = err
		delete(r.mods.byHash, m.hash)
	} else {
		m.cm = cm
		m.minPages = cm.ExportedMemories()["memory"].Min()
		m.elem = r.mods.lru.PushFront(m)
		for r.mods.lru.Len() > r.mods.max {
			old := r.mods.lru.Remove(r.mods.lru.Back()).(*compiled)
			old.elem = nil
			old.evicted = true
			delete(r.mods.byHash, old.hash)
			if old.refs == 0 {
				evicted = append(evicted, old)
			}
		}
	}
	r.mu.Unlock()
	close(m.ready)
	for _, old := range evicted {
		r.log.Debug("evicted a compiled module", "hash", short(old.hash))
		old.cm.Close(ctx)
	}
}

// release drops a hold taken by acquire, closing an evicted module when
// its last holder lets go.
func (r *Runtime) release(m *compiled) {
	r.mu.Lock()
	m.refs--
	last := m.refs == 0 && m.evicted && m.cm != nil
	r.mu.Unlock()
	if last {
		r.log.Debug("evicted a compiled module", "hash", short(m.hash))
		m.cm.Close(context.Background())
	}
}

// short abbreviates a hash for logs.
func short(hash string) string {
	if len(hash) > 12 {
		return hash[:12]
	}
	return hash
}
