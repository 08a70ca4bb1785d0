package wasm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"strata/fs"
	"strata/tiers/apps"
)

// testPrograms are the programs under testdata, built next to the samples.
var testPrograms = []string{"fail", "grow", "sleep"}

// built holds every program built for the tests, by name.
var built = map[string][]byte{}

// shared is a runtime the tests that need no fresh one use; every program
// is compiled in it before the tests start, so no test pays for a
// compilation it does not measure.
var shared *Runtime

// cacheDir is the compilation cache of shared, which fresh runtimes share
// so they compile nothing from scratch.
var cacheDir string

// coldCompile is how long shared took to compile the wc app.
var coldCompile time.Duration

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := buildModules(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "building the test apps:", err)
		return 1
	}
	var err error
	cacheDir, err = os.MkdirTemp("", "strata-wasm-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(cacheDir)
	shared, err = New(ctx, Config{CacheDir: cacheDir})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer shared.Close(ctx)
	var (
		wg   sync.WaitGroup
		errs = make(map[string]error)
		mu   sync.Mutex
	)
	for name, m := range built {
		wg.Go(func() {
			start := time.Now()
			err := shared.Compile(ctx, m, "")
			mu.Lock()
			defer mu.Unlock()
			errs[name] = err
			if name == "wc" {
				coldCompile = time.Since(start)
			}
		})
	}
	wg.Wait()
	for name, err := range errs {
		if err != nil {
			fmt.Fprintf(os.Stderr, "compiling %s: %v\n", name, err)
			return 1
		}
	}
	return m.Run()
}

// buildModules builds the sample apps and the test programs, in parallel.
func buildModules(ctx context.Context) error {
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		errs []error
	)
	build := func(name string, get func() ([]byte, error)) {
		wg.Go(func() {
			wasm, err := get()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			built[name] = wasm
		})
	}
	for _, name := range apps.Names {
		build(name, func() ([]byte, error) { return apps.Build(ctx, name) })
	}
	for _, name := range testPrograms {
		build(name, func() ([]byte, error) {
			src, err := os.ReadFile(filepath.Join("testdata", name, "main.go"))
			if err != nil {
				return nil, err
			}
			wasm, err := apps.BuildSource(ctx, src)
			if err != nil {
				return nil, fmt.Errorf("building testdata/%s: %w", name, err)
			}
			return wasm, nil
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// run runs the module name on the shared runtime.
func run(t testing.TB, name string, stdin []byte, lim Limits) (Result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return shared.Run(ctx, built[name], "", stdin, lim)
}

// mustRun runs the module name and fails the test unless it succeeds.
func mustRun(t testing.TB, name string, stdin []byte) Result {
	t.Helper()
	// A generous limit: these check what apps answer, not how fast, and
	// run under the race detector on a busy machine.
	res, err := run(t, name, stdin, Limits{Timeout: 2 * time.Minute})
	if err != nil {
		t.Fatalf("%s: %v (stderr %q)", name, err, res.Stderr)
	}
	if res.ExitCode != 0 {
		t.Fatalf("%s: exit code %d without an error", name, res.ExitCode)
	}
	return res
}

// runError returns the *RunError in err, failing the test if there is none.
func runError(t *testing.T, err error) *RunError {
	t.Helper()
	var re *RunError
	if !errors.As(err, &re) {
		t.Fatalf("error %v (%T) holds no *RunError", err, err)
	}
	return re
}

func TestUpper(t *testing.T) {
	for _, in := range []string{"", "hello, world\n", "ÄÖÜ straße ǆ ﬃ\n", "no newline"} {
		res := mustRun(t, "upper", []byte(in))
		if want := strings.ToUpper(in); string(res.Stdout) != want {
			t.Errorf("upper(%q) = %q, want %q", in, res.Stdout, want)
		}
	}
	// A megabyte of text with multi-byte characters goes through the
	// app's buffer many times, splitting characters between reads.
	big := []byte(strings.Repeat("abc é€ xyz\n", 100_000))
	res := mustRun(t, "upper", big)
	if !bytes.Equal(res.Stdout, bytes.ToUpper(big)) {
		t.Errorf("upper of %d bytes: got %d bytes, not the upper-cased input", len(big), len(res.Stdout))
	}
}

func TestWc(t *testing.T) {
	cases := []struct{ in, want string }{
		{"", "      0       0       0\n"},
		{"hello world\nfoo\n", "      2       3      16\n"},
		{"abc", "      0       1       3\n"},
		{"  two   words  ", "      0       2      15\n"},
		{"a\tb\vc\fd\re\n", "      1       5      10\n"},
		{"a\x01b \x01 \xff", "      0       1       7\n"},       // controls and bad bytes are not words
		{"a\u00a0b\u2003c\u2060d", "      0       4      12\n"}, // no-break and em spaces separate
		{"a\u2028b\u0085c", "      0       1       8\n"},        // unprintable separators do not
		{strings.Repeat("word ", 200_000), "      0  200000 1000000\n"},
		{strings.Repeat("x\n", 5_000_000), "5000000 5000000 10000000\n"}, // wider than 7 columns
	}
	for _, c := range cases {
		res := mustRun(t, "wc", []byte(c.in))
		if string(res.Stdout) != c.want {
			name := c.in
			if len(name) > 20 {
				name = name[:20] + "..."
			}
			t.Errorf("wc(%q) = %q, want %q", name, res.Stdout, c.want)
		}
	}
}

// TestWcMatchesSystem compares the wc app with the machine's wc on random
// text, when the machine has one that runs in a UTF-8 locale.
func TestWcMatchesSystem(t *testing.T) {
	wc, err := exec.LookPath("wc")
	if err != nil {
		t.Skip("no wc command")
	}
	pieces := []string{" ", "\n", "\t", "\v", "\f", "\r", "a", "Z", "\x00", "\x01", "\x7f", "\xff",
		"\xc3", "\xe2\x80", "\u00a0", "\u2003", "\u2028", "\u0085", "\u2060", "é", "€", "😀", "\u200b"}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 20 {
		var b strings.Builder
		n := rng.IntN(100_000)
		if i < 5 {
			n = rng.IntN(20)
		}
		for range n {
			b.WriteString(pieces[rng.IntN(len(pieces))])
		}
		in := b.String()
		cmd := exec.Command(wc)
		cmd.Stdin = strings.NewReader(in)
		cmd.Env = append(os.Environ(), "LC_ALL=C.UTF-8")
		want, err := cmd.Output()
		if err != nil {
			t.Skipf("running %s: %v", wc, err)
		}
		res := mustRun(t, "wc", []byte(in))
		if !bytes.Equal(res.Stdout, want) {
			t.Errorf("input %d (%d bytes): wc app says %q, %s says %q", i, len(in), res.Stdout, wc, want)
		}
	}
}

func TestSHA256(t *testing.T) {
	for _, n := range []int{0, 1, 55, 56, 64, 1000, 1 << 20} {
		in := bytes.Repeat([]byte{'q'}, n)
		sum := sha256.Sum256(in)
		want := hex.EncodeToString(sum[:]) + "\n"
		res := mustRun(t, "sha256", in)
		if string(res.Stdout) != want {
			t.Errorf("sha256 of %d bytes = %q, want %q", n, res.Stdout, want)
		}
	}
}

func TestExitStatus(t *testing.T) {
	res, err := run(t, "fail", []byte("fail: starting\n"), Limits{})
	if err == nil {
		t.Fatal("a run that exited with status 3 succeeded")
	}
	if res.ExitCode != 3 {
		t.Errorf("ExitCode = %d, want 3", res.ExitCode)
	}
	if string(res.Stdout) != "partial answer\n" {
		t.Errorf("Stdout = %q", res.Stdout)
	}
	if want := "fail: starting\nfail: the request is wrong\n"; string(res.Stderr) != want {
		t.Errorf("Stderr = %q, want %q", res.Stderr, want)
	}
	re := runError(t, err)
	if re.Code != 3 {
		t.Errorf("RunError.Code = %d, want 3", re.Code)
	}
	if want := "app exited with status 3: fail: the request is wrong"; re.Error() != want {
		t.Errorf("RunError = %q, want %q", re.Error(), want)
	}
	if !strings.Contains(err.Error(), "app exited with status 3: fail: the request is wrong") {
		t.Errorf("error %q does not say why", err)
	}
	if !bytes.Equal(re.Stderr, res.Stderr) {
		t.Errorf("RunError.Stderr = %q, want %q", re.Stderr, res.Stderr)
	}
	if k := fs.KindOf(err); k != fs.Other {
		t.Errorf("kind %v, want Other", k)
	}
}

// TestTimeLimitDoesNotBlockOthers stops a spinning app at its time limit
// while ten other runs start at the same moment and finish normally.
func TestTimeLimitDoesNotBlockOthers(t *testing.T) {
	rt := shared
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, name := range []string{"spin", "upper"} { // compile outside the timing
		if err := rt.Compile(ctx, built[name], ""); err != nil {
			t.Fatal(err)
		}
	}

	const limit = 300 * time.Millisecond
	const others = 10
	var (
		wg        sync.WaitGroup
		spinErr   error
		spinTook  time.Duration
		upperErrs [others]error
		upperTook [others]time.Duration
	)
	startLine := make(chan struct{})
	wg.Go(func() {
		<-startLine
		start := time.Now()
		_, spinErr = rt.Run(ctx, built["spin"], "", nil, Limits{Timeout: limit})
		spinTook = time.Since(start)
	})
	for i := range others {
		wg.Go(func() {
			<-startLine
			start := time.Now()
			in := fmt.Sprintf("request %d\n", i)
			res, err := rt.Run(ctx, built["upper"], "", []byte(in), Limits{Timeout: 30 * time.Second})
			upperTook[i] = time.Since(start)
			if err == nil && string(res.Stdout) != strings.ToUpper(in) {
				err = fmt.Errorf("answer %q", res.Stdout)
			}
			upperErrs[i] = err
		})
	}
	close(startLine)
	wg.Wait()

	for i, err := range upperErrs {
		if err != nil {
			t.Errorf("upper run %d: %v", i, err)
		}
		t.Logf("upper run %d took %v", i, upperTook[i])
	}
	t.Logf("spin stopped after %v: %v", spinTook, spinErr)
	if spinErr == nil {
		t.Fatal("spin ended without an error")
	}
	if spinTook < limit || spinTook > limit+3*time.Second {
		t.Errorf("spin returned after %v, want between %v and %v", spinTook, limit, limit+3*time.Second)
	}
	if k := fs.KindOf(spinErr); k != fs.Timeout {
		t.Errorf("kind %v, want Timeout", k)
	}
	if !strings.Contains(spinErr.Error(), "app stopped at its time limit of 300ms") {
		t.Errorf("error %q does not name the time limit", spinErr)
	}
	if re := runError(t, spinErr); re.Code != -1 {
		t.Errorf("RunError.Code = %d, want -1", re.Code)
	}
}

func TestSleepStoppedAtTimeLimit(t *testing.T) {
	const limit = 200 * time.Millisecond
	start := time.Now()
	_, err := run(t, "sleep", nil, Limits{Timeout: limit})
	took := time.Since(start)
	if fs.KindOf(err) != fs.Timeout {
		t.Fatalf("err = %v, want a time limit error", err)
	}
	if took > limit+3*time.Second {
		t.Errorf("a sleeping app was stopped after %v, limit %v", took, limit)
	}
}

func TestCallerCancels(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	start := time.Now()
	_, err := shared.Run(ctx, built["spin"], "", nil, Limits{Timeout: time.Minute})
	took := time.Since(start)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if k := fs.KindOf(err); k != fs.Canceled {
		t.Errorf("kind %v, want Canceled", k)
	}
	if took > 3*time.Second {
		t.Errorf("a canceled run returned after %v", took)
	}

	// A context that is already done runs nothing.
	if _, err := shared.Run(ctx, built["upper"], "", nil, Limits{}); !errors.Is(err, context.Canceled) {
		t.Errorf("run with a canceled context: %v", err)
	}

	// The caller's own deadline, shorter than the limit, is the caller's.
	dctx, dcancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer dcancel()
	_, err = shared.Run(dctx, built["spin"], "", nil, Limits{Timeout: time.Minute})
	if !errors.Is(err, context.DeadlineExceeded) || fs.KindOf(err) != fs.Timeout {
		t.Errorf("run past the caller's deadline: %v", err)
	}
	if strings.Contains(fmt.Sprint(err), "time limit") {
		t.Errorf("the caller's deadline is reported as the app's time limit: %v", err)
	}
}

func TestMemoryCap(t *testing.T) {
	res, err := run(t, "grow", []byte("256\n"), Limits{MemoryMiB: 64})
	if err == nil {
		t.Fatalf("an app allocated 256 MiB under a 64 MiB cap: %q", res.Stdout)
	}
	if k := fs.KindOf(err); k != fs.TooLarge {
		t.Errorf("kind %v, want TooLarge", k)
	}
	if !strings.Contains(err.Error(), "app reached its memory cap of 64 MiB") {
		t.Errorf("error %q does not name the memory cap", err)
	}
	if !strings.HasSuffix(err.Error(), ": fatal error: out of memory") {
		t.Errorf("error %q does not quote the runtime's complaint", err)
	}
	t.Logf("memory cap: %v", err)

	// Under the cap the same app works, and so does the default cap.
	res = mustRun(t, "grow", []byte("16\n"))
	if !strings.HasPrefix(string(res.Stdout), "allocated 16 MiB") {
		t.Errorf("grow 16 printed %q", res.Stdout)
	}
	if _, err := run(t, "grow", []byte("16\n"), Limits{MemoryMiB: 64}); err != nil {
		t.Errorf("16 MiB under a 64 MiB cap: %v", err)
	}

	// A cap below the module's initial memory refuses to start it.
	_, err = run(t, "upper", nil, Limits{MemoryMiB: 1})
	if fs.KindOf(err) != fs.TooLarge || !strings.Contains(err.Error(), "memory cap of 1 MiB") {
		t.Errorf("1 MiB cap: %v", err)
	}
}

func TestOutputCap(t *testing.T) {
	const max = 64 << 10
	big := bytes.Repeat([]byte("x"), 1<<20)
	// upper writes its input to stdout; fail copies it to stderr.
	for app, stream := range map[string]string{"upper": "stdout", "fail": "stderr"} {
		res, err := run(t, app, big, Limits{MaxOutput: max})
		if err == nil {
			t.Fatalf("%s: 1 MiB of output under a %d byte cap succeeded", stream, max)
		}
		want := fmt.Sprintf("app wrote more than %d bytes to %s", max, stream)
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %q does not say %q", stream, err, want)
		}
		if k := fs.KindOf(err); k != fs.TooLarge {
			t.Errorf("%s: kind %v, want TooLarge", stream, k)
		}
		got := res.Stdout
		if stream == "stderr" {
			got = res.Stderr
		}
		if len(got) != max {
			t.Errorf("%s: kept %d bytes, want %d", stream, len(got), max)
		}
	}
	// Exactly the cap is allowed.
	res, err := run(t, "upper", big[:max], Limits{MaxOutput: max})
	if err != nil || len(res.Stdout) != max {
		t.Errorf("output of exactly the cap: %d bytes, %v", len(res.Stdout), err)
	}
}

// wasmModule assembles a module from sections, each an id and its content.
func wasmModule(sections ...[]byte) []byte {
	m := []byte("\x00asm\x01\x00\x00\x00")
	for _, s := range sections {
		m = append(m, s[0], byte(len(s)-1)) // every test section is under 128 bytes
		m = append(m, s[1:]...)
	}
	return m
}

// Sections of the hand-made test modules.
var (
	typeSection   = []byte{1, 1, 0x60, 0, 0}                        // one type: () -> ()
	funcSection   = []byte{3, 1, 0}                                 // one function of type 0
	memorySection = []byte{5, 1, 0, 1}                              // one memory of one page
	codeSection   = []byte{10, 1, 2, 0, 0x0b}                       // its body: no locals, end
	importEnv     = []byte{2, 1, 3, 'e', 'n', 'v', 1, 'f', 0x00, 0} // env.f of type 0
)

// exports is an export section for the given (name, kind, index) triples.
func exports(entries ...any) []byte {
	s := []byte{7, byte(len(entries) / 3)}
	for i := 0; i < len(entries); i += 3 {
		name := entries[i].(string)
		s = append(s, byte(len(name)))
		s = append(s, name...)
		s = append(s, byte(entries[i+1].(int)), byte(entries[i+2].(int)))
	}
	return s
}

func TestBadModules(t *testing.T) {
	ctx := context.Background()
	const fn, mem = 0, 2
	cases := []struct {
		name   string
		module []byte
		want   string
	}{
		{"garbage", []byte("this is not a wasm module at all"), "does not compile"},
		{"empty", nil, "does not compile"},
		{"truncated", built["upper"][:1000], "does not compile"},
		{"no _start", wasmModule(typeSection, funcSection, memorySection, exports("memory", mem, 0), codeSection),
			"exports no _start function"},
		{"no memory", wasmModule(typeSection, funcSection, exports("_start", fn, 0), codeSection),
			"exports no memory"},
		{"foreign import", wasmModule(typeSection, importEnv, funcSection, memorySection,
			exports("_start", fn, 1, "memory", mem, 0), codeSection), "imports env.f"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := Validate(ctx, c.module)
			if err == nil || !strings.Contains(err.Error(), c.want) || fs.KindOf(err) != fs.Invalid {
				t.Errorf("Validate: %v, want an Invalid error saying %q", err, c.want)
			}
			_, err = shared.Run(ctx, c.module, "", nil, Limits{})
			if err == nil || !strings.Contains(err.Error(), c.want) || fs.KindOf(err) != fs.Invalid {
				t.Errorf("Run: %v, want an Invalid error saying %q", err, c.want)
			}
			t.Logf("%v", err)
		})
	}

	// The smallest command module is valid, and runs to exit status 0.
	minimal := wasmModule(typeSection, funcSection, memorySection, exports("_start", fn, 0, "memory", mem, 0), codeSection)
	if err := Validate(ctx, minimal); err != nil {
		t.Errorf("Validate(minimal module): %v", err)
	}
	res, err := shared.Run(ctx, minimal, "", []byte("ignored"), Limits{})
	if err != nil || res.ExitCode != 0 || len(res.Stdout) != 0 {
		t.Errorf("Run(minimal module) = %+v, %v", res, err)
	}
}

func TestValidateApps(t *testing.T) {
	for _, name := range apps.Names {
		if err := Validate(context.Background(), built[name]); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// countingHandler counts log records by message.
type countingHandler struct {
	mu     sync.Mutex
	counts map[string]int
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *countingHandler) WithGroup(string) slog.Handler            { return h }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.counts[r.Message]++
	return nil
}

func (h *countingHandler) count(msg string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.counts[msg]
}

// TestCompileOnce starts eight first runs of one module at once: they
// share one compilation.
func TestCompileOnce(t *testing.T) {
	h := &countingHandler{counts: map[string]int{}}
	rt, err := New(context.Background(), Config{Log: slog.New(h), CacheDir: cacheDir})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close(context.Background())
	hash := Hash(built["sha256"])
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Go(func() {
			_, errs[i] = rt.Run(context.Background(), built["sha256"], hash, []byte("x"), Limits{})
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("run %d: %v", i, err)
		}
	}
	if n := h.count("compiled a module"); n != 1 {
		t.Errorf("the module compiled %d times, want once", n)
	}
}

// TestEviction keeps one compiled module: runs alternate between two
// modules, and a module evicted while it runs keeps running until its
// time limit. Its modules are hand-made, so they compile at once.
func TestEviction(t *testing.T) {
	h := &countingHandler{counts: map[string]int{}}
	rt, err := New(context.Background(), Config{Log: slog.New(h), MaxModules: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close(context.Background())
	ctx := context.Background()
	const fn, mem = 0, 2
	loop := wasmModule(typeSection, funcSection, memorySection, exports("_start", fn, 0, "memory", mem, 0),
		[]byte{10, 1, 7, 0, 0x03, 0x40, 0x0c, 0x00, 0x0b, 0x0b}) // loop, br 0, end, end
	onePage := wasmModule(typeSection, funcSection, memorySection, exports("_start", fn, 0, "memory", mem, 0), codeSection)
	twoPages := wasmModule(typeSection, funcSection, []byte{5, 1, 0, 2}, exports("_start", fn, 0, "memory", mem, 0), codeSection)

	if err := rt.Compile(ctx, loop, ""); err != nil {
		t.Fatal(err)
	}
	loopDone := make(chan error, 1)
	go func() {
		_, err := rt.Run(ctx, loop, "", nil, Limits{Timeout: time.Second})
		loopDone <- err
	}()
	// Wait until the run holds the compiled loop.
	held := func() bool {
		rt.mu.Lock()
		defer rt.mu.Unlock()
		m := rt.mods.byHash[Hash(loop)]
		return m != nil && m.refs > 0
	}
	for i := 0; !held(); i++ {
		if i == 5000 {
			t.Fatal("the looping run never started")
		}
		time.Sleep(time.Millisecond)
	}
	for i := range 3 {
		for _, m := range [][]byte{onePage, twoPages} {
			if _, err := rt.Run(ctx, m, "", nil, Limits{}); err != nil {
				t.Fatalf("round %d: %v", i, err)
			}
		}
	}
	select {
	case err := <-loopDone:
		if fs.KindOf(err) != fs.Timeout {
			t.Errorf("evicted loop: %v, want its time limit", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("an evicted module's run did not stop")
	}
	if n := h.count("compiled a module"); n != 7 {
		t.Errorf("%d compilations, want 7 (the loop, then two modules three times each)", n)
	}
	if n := h.count("evicted a compiled module"); n != 6 {
		t.Errorf("%d evictions, want 6", n)
	}
	// The loop was evicted while it ran, and closed when it stopped.
	rt.mu.Lock()
	_, cached := rt.mods.byHash[Hash(loop)]
	rt.mu.Unlock()
	if cached {
		t.Error("the loop is still cached")
	}
}

// TestCacheDir starts a runtime on the cache directory shared filled: it
// compiles from the disk, much faster than shared did from scratch.
func TestCacheDir(t *testing.T) {
	ctx := context.Background()
	rt, err := New(ctx, Config{CacheDir: cacheDir})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close(ctx)
	start := time.Now()
	if err := rt.Compile(ctx, built["wc"], ""); err != nil {
		t.Fatal(err)
	}
	warm := time.Since(start)
	res, err := rt.Run(ctx, built["wc"], "", []byte("a b\n"), Limits{})
	if err != nil || string(res.Stdout) != "      1       2       4\n" {
		t.Fatalf("wc answered %q, %v", res.Stdout, err)
	}
	t.Logf("compile from scratch %v, from the disk cache %v", coldCompile, warm)
	if warm > coldCompile {
		t.Errorf("compiling from the disk cache (%v) was slower than from scratch (%v)", warm, coldCompile)
	}
	entries, err := os.ReadDir(cacheDir)
	if err != nil || len(entries) == 0 {
		t.Errorf("the cache directory is empty (%v)", err)
	}
}

func TestClose(t *testing.T) {
	ctx := context.Background()
	rt, err := New(ctx, Config{CacheDir: cacheDir})
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.Compile(ctx, built["spin"], ""); err != nil {
		t.Fatal(err)
	}
	spinDone := make(chan error, 1)
	go func() {
		_, err := rt.Run(ctx, built["spin"], "", nil, Limits{Timeout: time.Minute})
		spinDone <- err
	}()
	time.Sleep(200 * time.Millisecond)
	closeCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := rt.Close(closeCtx); err != nil {
		t.Errorf("Close: %v", err)
	}
	select {
	case err := <-spinDone:
		if fs.KindOf(err) != fs.Unavailable {
			t.Errorf("run stopped by Close: %v, want Unavailable", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not stop a running app")
	}
	if _, err := rt.Run(ctx, built["upper"], "", nil, Limits{}); fs.KindOf(err) != fs.Unavailable {
		t.Errorf("Run after Close: %v", err)
	}
	if err := rt.Close(ctx); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestDiagnosis(t *testing.T) {
	for in, want := range map[string]string{
		"":              "",
		"just a line\n": "just a line",
		"log\npanic: boom\n\ngoroutine 1 [running]:\nmain.main()\n\tmain.go:10 +0x1d\n": "panic: boom",
		"fatal error: out of memory\n\nruntime stack:\nruntime.throw()\n":               "fatal error: out of memory",
	} {
		if got := diagnosis([]byte(in)); got != want {
			t.Errorf("diagnosis(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestLastLine(t *testing.T) {
	for in, want := range map[string]string{
		"":                       "",
		"one\n":                  "one",
		"one\ntwo\n\n  \n":       "two",
		"  spaced  ":             "spaced",
		"bad \xff byte":          "bad \uFFFD byte",
		strings.Repeat("é", 400): strings.Repeat("é", 150) + "...",
	} {
		if got := lastLine([]byte(in)); got != want {
			t.Errorf("lastLine(%.20q) = %.20q, want %.20q", in, got, want)
		}
	}
}

// BenchmarkRunUpper100B is one run of upper on 100 bytes with the module
// compiled: the cost of an app call in process, without any transport.
func BenchmarkRunUpper100B(b *testing.B) {
	in := bytes.Repeat([]byte("strata! "), 13)[:100]
	ctx := context.Background()
	hash := Hash(built["upper"])
	if err := shared.Compile(ctx, built["upper"], hash); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for b.Loop() {
		res, err := shared.Run(ctx, built["upper"], hash, in, Limits{})
		if err != nil || len(res.Stdout) != len(in) {
			b.Fatalf("run: %d bytes, %v", len(res.Stdout), err)
		}
	}
}

// TestMaxRuns: past MaxRuns runs at once, a run waits its turn; one whose
// context ends first fails with Busy and says why; once a run ends, the
// next starts.
func TestMaxRuns(t *testing.T) {
	ctx := context.Background()
	rt, err := New(ctx, Config{CacheDir: cacheDir, MaxRuns: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close(ctx)
	for _, name := range []string{"spin", "upper"} {
		if err := rt.Compile(ctx, built[name], ""); err != nil {
			t.Fatal(err)
		}
	}
	spinning := make(chan error, 1)
	go func() {
		_, err := rt.Run(ctx, built["spin"], "", nil, Limits{Timeout: 2 * time.Second})
		spinning <- err
	}()
	// Wait until spin holds the one place.
	for deadline := time.Now().Add(10 * time.Second); len(rt.runs) == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("spin never started")
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_, err = rt.Run(wctx, built["upper"], "", []byte("x"), Limits{})
	cancel()
	if fs.KindOf(err) != fs.Busy || !strings.Contains(err.Error(), "runs 1 apps at once, its cap") {
		t.Errorf("a run past the cap: %v, want Busy saying so", err)
	}
	// A run with time to wait starts once spin is stopped.
	res, err := rt.Run(ctx, built["upper"], "", []byte("x"), Limits{})
	if err != nil || string(res.Stdout) != "X" {
		t.Errorf("the run after the wait: %q %v", res.Stdout, err)
	}
	if err := <-spinning; fs.KindOf(err) != fs.Timeout {
		t.Errorf("spin: %v", err)
	}
}
