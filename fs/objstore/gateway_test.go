package objstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"strata/fs"
	"strata/fs/objstore/s3test"
)

// The tests run against a real S3 server: Versity Gateway on a posix
// directory, started once for the package and stopped at the end.
var shared s3test.Shared

var ctx = context.Background()

func TestMain(m *testing.M) {
	code := m.Run()
	shared.Close()
	os.Exit(code)
}

// gateway is the test's S3 server, started on first use. Without
// versitygw the test is skipped, or fails in CI.
func gateway(t testing.TB) *s3test.Gateway {
	t.Helper()
	return shared.Get(t)
}

// admin is a plain S3 client of the test server, to look behind the store.
func admin(t testing.TB) *minio.Client {
	t.Helper()
	c, err := gateway(t).Client()
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
	if err := c.MakeBucket(ctx, name, minio.MakeBucketOptions{Region: gateway(t).Region}); err != nil {
		t.Fatalf("make bucket %s: %v", name, err)
	}
	return name
}

// config is the configuration of a store in bucket at prefix on the test
// server.
func config(t testing.TB, bucket, prefix string) Config {
	t.Helper()
	g := gateway(t)
	return Config{
		Bucket:      bucket,
		Prefix:      prefix,
		Endpoint:    g.Endpoint,
		Region:      g.Region,
		Credentials: &Credentials{AccessKeyID: g.AccessKey, SecretAccessKey: g.SecretKey},
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
	return fs.ReadAll(ctx, f, 1<<30)
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
