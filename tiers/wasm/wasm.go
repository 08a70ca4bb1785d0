// Package wasm runs apps: WASI preview1 command modules, on wazero. A run
// gives the app its request on standard input and takes its answer from
// standard output; standard error is kept for diagnosis, and a non-zero
// exit status is an error.
//
// A Runtime compiles each module once (keyed by its content hash) and keeps
// a bounded number of compiled modules in memory; with a cache directory,
// wazero also keeps the machine code on disk, so a restarted process
// compiles nothing it has compiled before. Every run gets a fresh instance
// with its own memory, a wall-clock limit, a memory cap and caps on its
// output. Runs are independent: a runaway app holds up only its own caller,
// until its time limit stops it.
package wasm

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"

	"strata/fs"
)

// Defaults for the zero fields of Limits and Config.
const (
	DefaultTimeout    = 5 * time.Second
	DefaultMemoryMiB  = 128
	DefaultMaxOutput  = 16 << 20
	DefaultMaxModules = 32
)

// MaxMemoryMiB is the largest memory cap: a 32-bit linear memory holds at
// most 4 GiB. A larger Limits.MemoryMiB means this.
const MaxMemoryMiB = 4096

// pageSize is the size of a page of linear memory.
const pageSize = 64 << 10

// stderrTail is how much of stderr a RunError keeps.
const stderrTail = 4 << 10

// Limits bounds one run. The zero value means the defaults.
type Limits struct {
	Timeout   time.Duration // wall-clock limit of one run; DefaultTimeout (5s) if zero
	MemoryMiB uint32        // linear memory cap; DefaultMemoryMiB (128) if zero
	MaxOutput int64         // cap on stdout and on stderr each; DefaultMaxOutput (16 MiB) if zero
}

// withDefaults fills the zero fields of l.
func (l Limits) withDefaults() Limits {
	if l.Timeout <= 0 {
		l.Timeout = DefaultTimeout
	}
	if l.MemoryMiB == 0 {
		l.MemoryMiB = DefaultMemoryMiB
	}
	l.MemoryMiB = min(l.MemoryMiB, MaxMemoryMiB)
	if l.MaxOutput <= 0 {
		l.MaxOutput = DefaultMaxOutput
	}
	return l
}

// Config configures a Runtime. The zero value is usable.
type Config struct {
	CacheDir   string       // wazero compilation cache directory ("" = in memory only)
	Log        *slog.Logger // nil discards
	MaxModules int          // compiled modules kept in memory (LRU), default 32
	// MaxRuns caps the runs at once (DefaultMaxRuns if zero), so that a
	// flood of invocations waits its turn instead of taking a memory cap
	// each: at most MaxRuns times the per-run memory cap is in use. A run
	// that cannot start before its context ends fails with Busy.
	MaxRuns int
}

// DefaultMaxRuns is the default of Config.MaxRuns: 32 per CPU, enough
// that apps stopped at their time limit do not hold up others, few enough
// that memory stays bounded (with the default cap, 4 GiB per CPU at most).
var DefaultMaxRuns = 32 * runtime.GOMAXPROCS(0)

// Result is what a run produced. Stdout and Stderr hold at most
// Limits.MaxOutput bytes each.
type Result struct {
	Stdout, Stderr []byte
	ExitCode       int // the app's exit status; -1 if it was stopped before it exited
	Elapsed        time.Duration
}

// RunError says why a run failed when the app itself failed: it exited
// with a non-zero status, crashed, or was stopped at one of its limits.
// Run returns it wrapped in an *fs.Error whose Kind classifies it; use
// errors.As to reach it.
type RunError struct {
	Code   int    // the exit status; -1 if the app did not exit by itself
	Reason string // what happened, e.g. "app exited with status 3"
	Detail string // the stderr line quoted after the reason (see Run); may be ""
	Stderr []byte // the last bytes (at most 4 KiB) of the app's stderr
}

// Error says what happened and quotes the app's stderr where that helps.
func (e *RunError) Error() string {
	if e.Detail == "" {
		return e.Reason
	}
	return e.Reason + ": " + e.Detail
}

// Hash returns the hex SHA-256 of module, the key a Runtime caches its
// compiled form under.
func Hash(module []byte) string {
	sum := sha256.Sum256(module)
	return hex.EncodeToString(sum[:])
}

// Runtime runs modules. Its methods are safe for concurrent use.
type Runtime struct {
	rt    wazero.Runtime
	cache wazero.CompilationCache // nil without a cache directory
	log   *slog.Logger
	wasi  map[string]api.FunctionDefinition // the host's WASI functions by name

	// modConfig is the part of an instance's configuration every run shares.
	modConfig wazero.ModuleConfig

	closing context.Context // done when Close starts; stops every run
	stopAll context.CancelFunc

	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup // runs and compilations in progress
	mods   modules

	runs chan struct{} // a token per run in progress, MaxRuns in all
}

// errClosed stops the runs in progress when the runtime closes.
var errClosed = errors.New("the wasm runtime is closed")

// New starts a runtime. Close releases it.
func New(ctx context.Context, cfg Config) (*Runtime, error) {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxModules <= 0 {
		cfg.MaxModules = DefaultMaxModules
	}
	if cfg.MaxRuns <= 0 {
		cfg.MaxRuns = DefaultMaxRuns
	}
	// Closing on a done context is what stops a runaway app; its checks
	// make compute-bound code about 2x slower (SHA-256 measured), the
	// price of a time limit. Per-run memory caps are enforced by a memory
	// allocator given to each instance; the runtime-wide limit is only
	// the 4 GiB ceiling, because it is fixed when a module compiles.
	rc := wazero.NewRuntimeConfig().
		WithCloseOnContextDone(true).
		WithMemoryLimitPages(MaxMemoryMiB << 20 / pageSize)
	var cache wazero.CompilationCache
	if cfg.CacheDir != "" {
		c, err := wazero.NewCompilationCacheWithDir(cfg.CacheDir)
		if err != nil {
			return nil, fmt.Errorf("wasm: opening the compilation cache in %s: %w", cfg.CacheDir, err)
		}
		cache = c
		rc = rc.WithCompilationCache(cache)
	}
	rt := wazero.NewRuntimeWithConfig(ctx, rc)
	wasi, err := instantiateWASI(ctx, rt)
	if err != nil {
		rt.Close(ctx)
		if cache != nil {
			cache.Close(ctx)
		}
		return nil, err
	}
	closing, stopAll := context.WithCancel(context.WithoutCancel(ctx))
	r := &Runtime{
		rt:      rt,
		cache:   cache,
		log:     log,
		wasi:    wasi,
		closing: closing,
		stopAll: stopAll,
		mods:    newModules(cfg.MaxModules),
		runs:    make(chan struct{}, cfg.MaxRuns),
		modConfig: wazero.NewModuleConfig().
			WithName("").         // anonymous, so instances of one module can run at once
			WithStartFunctions(). // Run calls _start itself, keeping the instance to inspect
			WithArgs("app").
			WithSysWalltime().
			WithSysNanotime().
			WithRandSource(rand.Reader),
	}
	log.Debug("wasm runtime started", "cache", cfg.CacheDir, "max_modules", cfg.MaxModules)
	return r, nil
}

// Close stops the runs in progress, waits for them (until ctx is done) and
// releases the runtime. Later calls to Run fail.
func (r *Runtime) Close(ctx context.Context) error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	r.mu.Unlock()
	r.stopAll()

	done := make(chan struct{})
	go func() { r.wg.Wait(); close(done) }()
	var errs []error
	select {
	case <-done:
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("wasm: closing before every run stopped: %w", ctx.Err()))
	}
	if err := r.rt.Close(context.WithoutCancel(ctx)); err != nil {
		errs = append(errs, fmt.Errorf("wasm: closing the runtime: %w", err))
	}
	if r.cache != nil {
		if err := r.cache.Close(context.WithoutCancel(ctx)); err != nil {
			errs = append(errs, fmt.Errorf("wasm: closing the compilation cache: %w", err))
		}
	}
	r.log.Debug("wasm runtime closed")
	return errors.Join(errs...)
}

// enter registers an operation in progress; it fails once Close started.
func (r *Runtime) enter(op string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return &fs.Error{Op: op, Kind: fs.Unavailable, Err: errClosed}
	}
	r.wg.Add(1)
	return nil
}

// Compile compiles module into the runtime's cache and checks that it is
// a WASI command module this runtime can run, so that a deploy can refuse
// a bad module before any run. hash is as for Run.
func (r *Runtime) Compile(ctx context.Context, module []byte, hash string) error {
	if err := r.enter("compile"); err != nil {
		return err
	}
	defer r.wg.Done()
	if hash == "" {
		hash = Hash(module)
	}
	m, err := r.acquire(ctx, hash, module)
	if err != nil {
		return err
	}
	r.release(m)
	return nil
}

// Validate compiles module and checks that it is a WASI preview1 command
// module: it exports a _start function taking and returning nothing and a
// memory named "memory", and imports only WASI functions. It compiles with
// wazero's interpreter, which checks the whole module but makes no machine
// code, so it is cheap enough for a deploy-time check.
func Validate(ctx context.Context, module []byte) error {
	rt := wazero.NewRuntimeWithConfig(ctx, wazero.NewRuntimeConfigInterpreter())
	defer rt.Close(context.WithoutCancel(ctx))
	wasi, err := instantiateWASI(ctx, rt)
	if err != nil {
		return err
	}
	cm, err := rt.CompileModule(ctx, module)
	if err != nil {
		return compileError(err)
	}
	defer cm.Close(context.WithoutCancel(ctx))
	if err := checkCommand(cm, wasi); err != nil {
		return &fs.Error{Op: "validate", Kind: fs.Invalid, Err: err}
	}
	return nil
}

// instantiateWASI makes the WASI host functions available in rt and
// returns their definitions by name.
func instantiateWASI(ctx context.Context, rt wazero.Runtime) (map[string]api.FunctionDefinition, error) {
	host, err := wasi_snapshot_preview1.NewBuilder(rt).Compile(ctx)
	if err == nil {
		_, err = rt.InstantiateModule(ctx, host, wazero.NewModuleConfig())
	}
	if err != nil {
		return nil, fmt.Errorf("wasm: instantiating WASI: %w", err)
	}
	return host.ExportedFunctions(), nil
}

// compileError reports a module wazero refused.
func compileError(err error) error {
	return &fs.Error{Op: "compile", Kind: fs.Invalid, Err: fmt.Errorf("the module does not compile: %w", err)}
}

// checkCommand checks that cm is a WASI command module whose imports wasi
// (the host's WASI functions) satisfies.
func checkCommand(cm wazero.CompiledModule, wasi map[string]api.FunctionDefinition) error {
	start, ok := cm.ExportedFunctions()["_start"]
	if !ok {
		return errors.New("the module exports no _start function: it is not a WASI command module")
	}
	if len(start.ParamTypes()) != 0 || len(start.ResultTypes()) != 0 {
		return errors.New("the module's _start function takes or returns values: it is not a WASI command module")
	}
	if _, ok := cm.ExportedMemories()["memory"]; !ok {
		return errors.New("the module exports no memory named \"memory\"")
	}
	if len(cm.ImportedMemories()) != 0 {
		return errors.New("the module imports a memory; an app must define its own")
	}
	for _, imp := range cm.ImportedFunctions() {
		mod, name, _ := imp.Import()
		if mod != wasi_snapshot_preview1.ModuleName {
			return fmt.Errorf("the module imports %s.%s; an app may import only from %s",
				mod, name, wasi_snapshot_preview1.ModuleName)
		}
		host, ok := wasi[name]
		if !ok {
			return fmt.Errorf("the module imports %s.%s, which this runtime does not provide", mod, name)
		}
		if !sameTypes(imp.ParamTypes(), host.ParamTypes()) || !sameTypes(imp.ResultTypes(), host.ResultTypes()) {
			return fmt.Errorf("the module imports %s.%s with the wrong signature", mod, name)
		}
	}
	return nil
}

func sameTypes(a, b []api.ValueType) bool { return bytes.Equal(a, b) }

// diagnosis is the line of an app's stderr that best says why it failed:
// the first "panic: " or "fatal error: " line of a Go program's crash
// report when there is one (its last lines are a stack trace), otherwise
// the last non-blank line.
func diagnosis(stderr []byte) string {
	for line := range bytes.Lines(stderr) {
		if bytes.HasPrefix(line, []byte("panic: ")) || bytes.HasPrefix(line, []byte("fatal error: ")) {
			return cleanLine(line)
		}
	}
	return lastLine(stderr)
}

// lastLine is the last non-blank line of b, cleaned by cleanLine.
func lastLine(b []byte) string {
	b = bytes.TrimRight(b, " \t\r\n")
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[i+1:]
	}
	return cleanLine(b)
}

// cleanLine trims line, makes it valid UTF-8 and shortens it to a
// readable length.
func cleanLine(line []byte) string {
	s := strings.ToValidUTF8(strings.TrimSpace(string(line)), "\uFFFD")
	const maxLen = 300
	if len(s) > maxLen {
		cut := maxLen
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "..."
	}
	return s
}

// tail is the last n bytes of b, copied.
func tail(b []byte, n int) []byte {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return bytes.Clone(b)
}
