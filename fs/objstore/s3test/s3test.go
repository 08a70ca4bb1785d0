// Package s3test runs a real S3 server for tests, as net/http/httptest
// runs an HTTP one: Versity Gateway (versitygw) serving a temporary
// directory on a loopback port, stopped when the test ends.
package s3test

import (
	"bytes"
	"context"
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
}

// Start runs versitygw (from $STRATA_VERSITYGW, else from PATH) with a
// bucket of each name in buckets. Without versitygw the test fails when
// $CI is set (CI installs it: scripts/setup) and is skipped otherwise.
func Start(t testing.TB, buckets ...string) *Gateway {
	t.Helper()
	bin := os.Getenv("STRATA_VERSITYGW")
	if bin == "" {
		var err error
		if bin, err = exec.LookPath("versitygw"); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatal("versitygw is needed: scripts/setup installs it")
			}
			t.Skip("no versitygw here")
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	g := &Gateway{Endpoint: addr, AccessKey: "strata-test", SecretKey: "strata-test-secret"}
	cmd := exec.Command(bin, "--port", addr, "posix", t.TempDir())
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+g.AccessKey, "ROOT_SECRET_KEY="+g.SecretKey)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	logs := new(lockedBuffer)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("versitygw's log:\n%s", logs)
		}
	})
	cl, err := g.Client()
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, b := range buckets {
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := cl.MakeBucket(ctx, b, minio.MakeBucketOptions{})
			cancel()
			if err == nil {
				break
			}
			// An answer from the server will not change: only a server
			// not yet listening is waited for.
			if code := minio.ToErrorResponse(err).Code; code != "" || time.Now().After(deadline) {
				t.Fatalf("versitygw at %s: making bucket %s: %v\n%s", addr, b, err, logs)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return g
}

// Client is a minio client of the gateway.
func (g *Gateway) Client() (*minio.Client, error) {
	return minio.New(g.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(g.AccessKey, g.SecretKey, "")})
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
