// Package s3test runs a real S3 server for tests, as net/http/httptest
// runs an HTTP one: Versity Gateway (versitygw) serving a temporary
// directory on a loopback port. Start gives a test its own server,
// stopped when the test ends; a Shared one serves all the tests of a
// package.
package s3test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Gateway is a running S3 server.
type Gateway struct {
	Endpoint  string // HOST:PORT, plain HTTP
	AccessKey string
	SecretKey string
	Region    string // versitygw's default

	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	dir  string        // the served directory, removed by stop
	logs *lockedBuffer
}

// Start runs versitygw (from $STRATA_VERSITYGW, else from PATH) with a
// bucket of each name in buckets, for the test alone. Without versitygw
// the test fails when $CI is set (CI installs it: scripts/setup) and is
// skipped otherwise.
func Start(t testing.TB, buckets ...string) *Gateway {
	t.Helper()
	g, err := launch(false, buckets)
	if err != nil {
		fail(t, err)
	}
	t.Cleanup(func() {
		g.stop()
		if t.Failed() {
			t.Logf("versitygw's log:\n%s", g.logs)
		}
	})
	return g
}

// Shared is one gateway for all the tests of a package, started by the
// first Get and stopped by Close, which TestMain calls after m.Run. Its
// zero value is ready to use.
type Shared struct {
	once sync.Once
	g    *Gateway
	err  error
}

// Get returns the shared gateway, starting it on first use, with no
// bucket. Without versitygw the test fails or is skipped, as with Start.
func (s *Shared) Get(t testing.TB) *Gateway {
	t.Helper()
	s.once.Do(func() { s.g, s.err = launch(true, nil) })
	if s.err != nil {
		fail(t, s.err)
	}
	return s.g
}

// Close stops the shared gateway, if it was started, and removes its
// directory.
func (s *Shared) Close() {
	if s.g != nil {
		s.g.stop()
	}
}

// Client is a minio client of the gateway.
func (g *Gateway) Client() (*minio.Client, error) {
	return minio.New(g.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(g.AccessKey, g.SecretKey, ""), Region: g.Region})
}

// URL is the store URL of prefix in bucket.
func (g *Gateway) URL(bucket, prefix string) string {
	return fmt.Sprintf("s3://%s/%s?endpoint=%s&secure=false", bucket, prefix, g.Endpoint)
}

// Env sets the AWS credential variables to the gateway's for the test
// (and the processes it starts).
func (g *Gateway) Env(t testing.TB) {
	t.Setenv("AWS_ACCESS_KEY_ID", g.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", g.SecretKey)
}

// errNoBinary is why there is no gateway.
var errNoBinary = errors.New("versitygw is needed: scripts/setup installs it (go install github.com/versity/versitygw/cmd/versitygw@v1.8.0)")

// fail ends a test that has no gateway: skipped when versitygw is
// missing outside CI, failed otherwise.
func fail(t testing.TB, err error) {
	t.Helper()
	if errors.Is(err, errNoBinary) && os.Getenv("CI") == "" {
		t.Skip("no versitygw here")
	}
	t.Fatal(err)
}

// launch starts versitygw on a new temporary directory and makes the
// buckets; quiet leaves the requests out of its log. A port found free
// may be taken before the gateway binds it: then it tries another.
func launch(quiet bool, buckets []string) (*Gateway, error) {
	bin := os.Getenv("STRATA_VERSITYGW")
	if bin == "" {
		var err error
		if bin, err = exec.LookPath("versitygw"); err != nil {
			return nil, errNoBinary
		}
	}
	dir, err := os.MkdirTemp("", "s3test-")
	if err != nil {
		return nil, err
	}
	for range 3 {
		var g *Gateway
		if g, err = run(bin, dir, quiet); err == nil {
			if err = g.makeBuckets(buckets); err == nil {
				return g, nil
			}
			g.stop()
			return nil, err
		}
	}
	os.RemoveAll(dir)
	return nil, err
}

// run starts bin serving dir on a port that was free a moment ago and
// waits for it to listen.
func run(bin, dir string, quiet bool) (*Gateway, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	g := &Gateway{Endpoint: addr, AccessKey: "strata-test", SecretKey: "strata-test-secret", Region: "us-east-1",
		dir: dir, logs: new(lockedBuffer), done: make(chan struct{})}
	args := []string{"--port", addr}
	if quiet {
		args = append(args, "--quiet")
	}
	g.cmd = exec.Command(bin, append(args, "posix", dir)...)
	g.cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+g.AccessKey, "ROOT_SECRET_KEY="+g.SecretKey)
	// Should the test process die without its cleanup, the gateway goes too.
	g.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	g.cmd.Stdout, g.cmd.Stderr = g.logs, g.logs
	if err := g.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %v", bin, err)
	}
	go func() { g.cmd.Wait(); close(g.done) }()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-g.done:
			return nil, fmt.Errorf("versitygw exited: %v\n%s", g.cmd.ProcessState, g.logs)
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return g, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	g.cmd.Process.Kill()
	<-g.done
	return nil, fmt.Errorf("versitygw did not listen on %s within 30s:\n%s", addr, g.logs)
}

func (g *Gateway) makeBuckets(buckets []string) error {
	cl, err := g.Client()
	if err != nil {
		return err
	}
	for _, b := range buckets {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := cl.MakeBucket(ctx, b, minio.MakeBucketOptions{Region: g.Region})
		cancel()
		if err != nil {
			return fmt.Errorf("versitygw at %s: making bucket %s: %v\n%s", g.Endpoint, b, err, g.logs)
		}
	}
	return nil
}

// stop ends the gateway (SIGTERM, then SIGKILL after 5 s), by the PID
// this package started, and removes its directory.
func (g *Gateway) stop() {
	g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-g.done:
	case <-time.After(5 * time.Second):
		g.cmd.Process.Kill()
		<-g.done
	}
	os.RemoveAll(g.dir)
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
