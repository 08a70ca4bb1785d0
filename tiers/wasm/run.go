package wasm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tetratelabs/wazero/experimental"
	"github.com/tetratelabs/wazero/sys"

	"strata/fs"
)

// Causes of a run's context ending early.
var (
	errTimeLimit = errors.New("time limit")
	errOutputCap = errors.New("output cap")
)

// Run runs a WASI preview1 command module: stdin is the request, stdout
// the answer, stderr kept. module is the wasm bytes; hash is its content
// hash (hex SHA-256, see Hash) used as the compile-cache key; if "" Run
// computes it. A hash that does not match module poisons the cache for
// that hash, so pass one only when it was computed from these bytes.
//
// The Result holds what the app wrote even when Run fails. Failures are
// *fs.Error values: Kind Other with a *RunError for a non-zero exit or a
// crash, Timeout with a *RunError when the app reached lim.Timeout,
// TooLarge with a *RunError when it reached its memory cap or wrote more
// than lim.MaxOutput bytes, Invalid when the module does not compile or is
// not a command module, and Canceled or Timeout with ctx's error when ctx
// ended first. A RunError for an exit, a crash or the memory cap quotes
// one line of stderr: a Go program's "panic: " or "fatal error: " line if
// there is one, else the last line.
func (r *Runtime) Run(ctx context.Context, module []byte, hash string, stdin []byte, lim Limits) (Result, error) {
	if err := r.enter("run"); err != nil {
		return Result{ExitCode: -1}, err
	}
	defer r.wg.Done()
	if err := ctx.Err(); err != nil {
		return Result{ExitCode: -1}, ctxError("run", ctx)
	}
	if hash == "" {
		hash = Hash(module)
	}
	select {
	case r.runs <- struct{}{}:
		defer func() { <-r.runs }()
	case <-ctx.Done():
		return Result{ExitCode: -1}, &fs.Error{Op: "run", Kind: fs.Busy, Err: fmt.Errorf("the runtime runs %d apps at once, its cap, and none ended in time: %w", cap(r.runs), context.Cause(ctx))}
	case <-r.closing.Done():
		return Result{ExitCode: -1}, &fs.Error{Op: "run", Kind: fs.Unavailable, Err: errClosed}
	}
	m, err := r.acquire(ctx, hash, module)
	if err != nil {
		return Result{ExitCode: -1}, err
	}
	defer r.release(m)
	res, err := r.run(ctx, m, stdin, lim.withDefaults())
	if err != nil {
		r.log.Debug("app run failed", "hash", short(hash), "exit", res.ExitCode, "elapsed", res.Elapsed, "err", err)
	} else {
		r.log.Debug("app run", "hash", short(hash), "elapsed", res.Elapsed,
			"in", len(stdin), "out", len(res.Stdout), "stderr", len(res.Stderr))
	}
	return res, err
}

// run runs one instance of m.
func (r *Runtime) run(ctx context.Context, m *compiled, stdin []byte, lim Limits) (Result, error) {
	res := Result{ExitCode: -1}
	memLimit := uint64(lim.MemoryMiB) << 20
	if uint64(m.minPages)*pageSize > memLimit {
		return res, &fs.Error{Op: "run", Kind: fs.TooLarge, Err: &RunError{
			Code:   -1,
			Reason: fmt.Sprintf("app reached its memory cap of %d MiB: its initial memory is %d MiB", lim.MemoryMiB, uint64(m.minPages)*pageSize>>20),
		}}
	}

	// runCtx ends when the caller gives up, when the runtime closes, when
	// the time limit passes, or when the app writes too much; wazero then
	// stops the app at its next function call or loop iteration.
	stopCtx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	unhook := context.AfterFunc(r.closing, func() { stop(errClosed) })
	defer unhook()
	runCtx, cancel := context.WithTimeoutCause(stopCtx, lim.Timeout, errTimeLimit)
	defer cancel()

	stdout := &capWriter{max: lim.MaxOutput, stop: stop}
	stderr := &capWriter{max: lim.MaxOutput, stop: stop}
	mem := &cappedMemory{limit: memLimit}
	cfg := r.modConfig.
		WithStdin(bytes.NewReader(stdin)).
		WithStdout(stdout).
		WithStderr(stderr).
		WithNanosleep(sleeper(runCtx))

	start := time.Now()
	mod, err := r.rt.InstantiateModule(experimental.WithMemoryAllocator(runCtx, mem), m.cm, cfg)
	if err != nil {
		res.Elapsed = time.Since(start)
		if ctx.Err() != nil {
			return res, ctxError("run", ctx)
		}
		return res, &fs.Error{Op: "run", Kind: fs.Invalid, Err: fmt.Errorf("instantiating the module: %w", err)}
	}
	_, err = mod.ExportedFunction("_start").Call(runCtx)
	res.Elapsed = time.Since(start)
	mod.Close(context.WithoutCancel(ctx))
	res.Stdout = stdout.buf.Bytes()
	res.Stderr = stderr.buf.Bytes()

	var exit *sys.ExitError
	exited := errors.As(err, &exit) &&
		exit.ExitCode() != sys.ExitCodeContextCanceled && exit.ExitCode() != sys.ExitCodeDeadlineExceeded
	switch {
	case exited:
		res.ExitCode = int(exit.ExitCode())
	case err == nil:
		res.ExitCode = 0 // _start returned without calling proc_exit
	}
	fail := func(kind fs.Kind, reason, detail string) (Result, error) {
		return res, &fs.Error{Op: "run", Kind: kind, Err: &RunError{
			Code:   res.ExitCode,
			Reason: reason,
			Detail: detail,
			Stderr: tail(res.Stderr, stderrTail),
		}}
	}

	// The first limit the app reached explains whatever followed.
	switch {
	case stdout.over.Load():
		return fail(fs.TooLarge, fmt.Sprintf("app wrote more than %d bytes to stdout", lim.MaxOutput), "")
	case stderr.over.Load():
		return fail(fs.TooLarge, fmt.Sprintf("app wrote more than %d bytes to stderr", lim.MaxOutput), "")
	case mem.hit.Load() && res.ExitCode != 0:
		return fail(fs.TooLarge, fmt.Sprintf("app reached its memory cap of %d MiB", lim.MemoryMiB), diagnosis(res.Stderr))
	case exited && res.ExitCode == 0, err == nil:
		return res, nil
	case exited:
		return fail(fs.Other, fmt.Sprintf("app exited with status %d", res.ExitCode), diagnosis(res.Stderr))
	}
	switch cause := context.Cause(runCtx); {
	case ctx.Err() != nil:
		return res, ctxError("run", ctx)
	case errors.Is(cause, errClosed):
		return res, &fs.Error{Op: "run", Kind: fs.Unavailable, Err: errClosed}
	case errors.Is(cause, errTimeLimit):
		return fail(fs.Timeout, fmt.Sprintf("app stopped at its time limit of %v", lim.Timeout), "")
	}
	// A trap: unreachable, an out-of-bounds access, a stack overflow.
	// wazero's message is one line and then a wasm stack trace.
	msg, _, _ := strings.Cut(err.Error(), "\n")
	return fail(fs.Other, "app crashed: "+msg, diagnosis(res.Stderr))
}

// ctxError reports that ctx ended, classified by its error.
func ctxError(op string, ctx context.Context) error {
	err := ctx.Err()
	if cause := context.Cause(ctx); cause != nil && cause != err {
		err = fmt.Errorf("%w: %w", err, cause)
	}
	return fs.E(op, "", fs.KindOf(ctx.Err()), err)
}

// sleeper returns the app's sleep: real time, cut short when ctx ends so
// a sleeping app stops at its time limit too.
func sleeper(ctx context.Context) sys.Nanosleep {
	return func(ns int64) {
		if ns <= 0 {
			return
		}
		t := time.NewTimer(time.Duration(ns))
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
		}
	}
}

// capWriter keeps what an app writes to one stream, up to max bytes. The
// first write beyond max stops the app. Writes come from the app's
// goroutine only; over is read after the app stopped.
type capWriter struct {
	buf  bytes.Buffer
	max  int64
	over atomic.Bool
	stop context.CancelCauseFunc
}

func (w *capWriter) Write(p []byte) (int, error) {
	if w.over.Load() {
		return 0, errOutputCap
	}
	room := w.max - int64(w.buf.Len())
	if int64(len(p)) <= room {
		return w.buf.Write(p)
	}
	w.buf.Write(p[:room])
	w.over.Store(true)
	w.stop(errOutputCap)
	return int(room), errOutputCap
}

// cappedMemory backs one instance's linear memory and enforces its cap:
// growing beyond limit fails (memory.grow returns -1 to the app), and hit
// records that it happened. wazero calls it from the app's goroutine.
type cappedMemory struct {
	limit uint64
	buf   []byte
	hit   atomic.Bool
}

// Allocate implements experimental.MemoryAllocator.
func (m *cappedMemory) Allocate(capacity, _ uint64) experimental.LinearMemory {
	m.buf = make([]byte, 0, min(capacity, m.limit))
	return m
}

// Reallocate implements experimental.LinearMemory. Memory only grows, and
// bytes past the length were never handed out, so they are still zero.
func (m *cappedMemory) Reallocate(size uint64) []byte {
	if size > m.limit {
		m.hit.Store(true)
		return nil
	}
	if size <= uint64(cap(m.buf)) {
		m.buf = m.buf[:size]
		return m.buf
	}
	grown := make([]byte, size, min(max(size, 2*uint64(cap(m.buf))), m.limit))
	copy(grown, m.buf)
	m.buf = grown
	return m.buf
}

// Free implements experimental.LinearMemory.
func (m *cappedMemory) Free() { m.buf = nil }
