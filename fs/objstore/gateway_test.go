package objstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"strata/fs"
)

// The tests run against a real S3 server: Versity Gateway on a posix
// directory, started once for the package on a free loopback port and
// killed at the end by its PID.
const (
	testKey    = "strataTestAccess"
	testSecret = "strataTestSecret0123456789"
)

var ctx = context.Background()

var gw struct {
	once    sync.Once
	missing string // why there is no gateway binary
	err     error
	addr    string
	dir     string
	cmd     *exec.Cmd
	exited  chan error
	out     *syncBuffer
}

func TestMain(m *testing.M) {
	code := m.Run()
	stopGateway()
	os.Exit(code)
}

// gateway returns the address of the test's S3 server, starting it on
// first use. Without a gateway binary the test is skipped, or fails in CI.
func gateway(t testing.TB) string {
	t.Helper()
	gw.once.Do(startGateway)
	if gw.missing != "" {
		if os.Getenv("CI") != "" {
			t.Fatal(gw.missing)
		}
		t.Skip(gw.missing)
	}
	if gw.err != nil {
		t.Fatal(gw.err)
	}
	return gw.addr
}

// gatewayBinary finds versitygw on PATH, or at $STRATA_VERSITYGW.
func gatewayBinary() (string, error) {
	if bin, err := exec.LookPath("versitygw"); err == nil {
		return bin, nil
	}
	if bin := os.Getenv("STRATA_VERSITYGW"); bin != "" {
		if _, err := os.Stat(bin); err != nil {
			return "", fmt.Errorf("STRATA_VERSITYGW=%s: %v", bin, err)
		}
		return bin, nil
	}
	return "", errors.New("versitygw is not on PATH and STRATA_VERSITYGW is not set: install it with `go install github.com/versity/versitygw/cmd/versitygw@v1.8.0`")
}

func startGateway() {
	bin, err := gatewayBinary()
	if err != nil {
		gw.missing = err.Error()
		return
	}
	gw.dir, err = os.MkdirTemp("", "objstore-gateway-")
	if err != nil {
		gw.err = err
		return
	}
	for range 3 {
		if gw.err = tryGateway(bin); gw.err == nil {
			return
		}
	}
}

// tryGateway starts the gateway on a port that was free a moment ago.
func tryGateway(bin string) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := ln.Addr().String()
	ln.Close()
	out := &syncBuffer{}
	cmd := exec.Command(bin, "--port", addr, "--quiet", "posix", gw.dir)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+testKey, "ROOT_SECRET_KEY="+testSecret)
	cmd.Stdout, cmd.Stderr = out, out
	// Should this process die without its cleanup, the gateway goes too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %v", bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return fmt.Errorf("versitygw exited: %v\n%s", err, out)
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			gw.addr, gw.cmd, gw.exited, gw.out = addr, cmd, exited, out
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	cmd.Process.Kill()
	<-exited
	return fmt.Errorf("versitygw did not listen on %s within 20s:\n%s", addr, out)
}

func stopGateway() {
	if gw.cmd != nil {
		gw.cmd.Process.Kill() // by the PID this package started
		select {
		case <-gw.exited:
		case <-time.After(10 * time.Second):
		}
	}
	if gw.dir != "" {
		// The gateway may still be dying; try a few times.
		for range 20 {
			if os.RemoveAll(gw.dir) == nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// admin is a plain S3 client of the test server, to look behind the store.
func admin(t testing.TB) *minio.Client {
	t.Helper()
	c, err := minio.New(gateway(t), &minio.Options{Creds: credentials.NewStaticV4(testKey, testSecret, ""), Region: "us-east-1"})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var buckets atomic.Int64

// newBucket makes a new, empty bucket.
func newBucket(t testing.TB) string {
	t.Helper()
	c := admin(t)
	name := fmt.Sprintf("strata-%d-%d", os.Getpid(), buckets.Add(1))
	if err := c.MakeBucket(ctx, name, minio.MakeBucketOptions{Region: "us-east-1"}); err != nil {
		t.Fatalf("make bucket %s: %v", name, err)
	}
	return name
}

// config is the configuration of a store in bucket at prefix on the test
// server.
func config(t testing.TB, bucket, prefix string) Config {
	t.Helper()
	return Config{
		Bucket:      bucket,
		Prefix:      prefix,
		Endpoint:    gateway(t),
		Region:      "us-east-1",
		Credentials: &Credentials{AccessKeyID: testKey, SecretAccessKey: testSecret},
		StagingDir:  t.TempDir(),
		Timeout:     10 * time.Second,
		Log:         testLog(t),
	}
}

// openStore opens a store (an edge) with cfg, closed at the end of the test.
func openStore(t testing.TB, cfg Config) *Store {
	t.Helper()
	s, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !s.closed.Load() {
			s.Close()
		}
	})
	return s
}

// testLog writes the store's warnings to the test log.
func testLog(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type tlogWriter struct{ t testing.TB }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// keys lists every object of bucket.
func keys(t testing.TB, bucket string) []string {
	t.Helper()
	var out []string
	for oi := range admin(t).ListObjectsIter(ctx, bucket, minio.ListObjectsOptions{Recursive: true}) {
		if oi.Err != nil {
			t.Fatalf("listing %s: %v", bucket, oi.Err)
		}
		out = append(out, oi.Key)
	}
	return out
}

// putRaw puts an object behind the store's back.
func putRaw(t testing.TB, bucket, key string, data []byte) {
	t.Helper()
	if _, err := admin(t).PutObject(ctx, bucket, key, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

// put creates name in d with data and closes it.
func put(t testing.TB, d fs.Dir, name string, data []byte) fs.File {
	t.Helper()
	f, h, err := d.Create(ctx, name, fs.WriteOnly|fs.Truncate, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	write(t, h, data, 0)
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	return f
}

func write(t testing.TB, h fs.Handle, data []byte, off int64) {
	t.Helper()
	if len(data) == 0 {
		return
	}
	if n, err := h.WriteAt(ctx, data, off); err != nil || n != len(data) {
		t.Fatalf("write: %d, %v", n, err)
	}
}

// get reads the file at p whole, through a fresh walk and open.
func get(t testing.TB, d fs.Dir, p string) ([]byte, error) {
	t.Helper()
	n, err := fs.Walk(ctx, d, p)
	if err != nil {
		return nil, err
	}
	f, ok := n.(fs.File)
	if !ok {
		return nil, fmt.Errorf("%s: a %T", p, n)
	}
	h, err := f.Open(ctx, fs.ReadOnly)
	if err != nil {
		return nil, err
	}
	defer h.Close(ctx)
	return readAll(h)
}

func readAll(h fs.Handle) ([]byte, error) {
	var out []byte
	buf := make([]byte, 256<<10)
	for {
		n, err := h.ReadAt(ctx, buf, int64(len(out)))
		out = append(out, buf[:n]...)
		if errors.Is(err, io.EOF) || (err == nil && n == 0) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
	}
}

// expect checks that the file at p holds want.
func expect(t testing.TB, d fs.Dir, p, want string) {
	t.Helper()
	got, err := get(t, d, p)
	if err != nil {
		t.Errorf("read %s: %v", p, err)
		return
	}
	if string(got) != want {
		t.Errorf("%s holds %q, want %q", p, brief(got), brief([]byte(want)))
	}
}

func brief(b []byte) string {
	if len(b) > 60 {
		return fmt.Sprintf("%s... (%d bytes)", b[:60], len(b))
	}
	return string(b)
}

func wantKind(t testing.TB, what string, err error, k fs.Kind) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: succeeded, want an error of kind %q", what, k)
		return
	}
	var fe *fs.Error
	if !errors.As(err, &fe) || fe.Op == "" {
		t.Errorf("%s: error %v (%T) is not an *fs.Error with an op", what, err, err)
	}
	if got := fs.KindOf(err); got != k {
		t.Errorf("%s: error %q of kind %q, want %q", what, err, got, k)
	}
}

func contextWithTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, d)
}
