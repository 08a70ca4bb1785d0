package up

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"strata/tiers/apps"
)

// BenchmarkInvokeNative is the other floor under BenchmarkInvoke: the same
// sample app, upper, built from the same source for linux/amd64 instead of
// wasip1, run as a process per call with the same 100-byte input on its
// standard input, as a CGI program or a shell pipeline would run it. It
// reports its median and p99 in the units of BenchmarkInvoke (p50-µs,
// p99-µs), so that both come out of one run:
//
//	go test -run '^$' -bench BenchmarkInvoke -benchtime 200x ./tiers/up/
func BenchmarkInvokeNative(b *testing.B) {
	input := bytes.Repeat([]byte("strata! "), 13)[:100]
	want := bytes.ToUpper(input)
	bin := buildNative(b, "upper")
	b.Run("native-process", func(b *testing.B) {
		var out bytes.Buffer
		measure(b, func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			out.Reset()
			cmd := exec.CommandContext(ctx, bin)
			cmd.Stdin = bytes.NewReader(input)
			cmd.Stdout = &out
			if err := cmd.Run(); err != nil || !bytes.Equal(out.Bytes(), want) {
				b.Fatalf("%q %v", out.Bytes(), err)
			}
		})
	})
}

// buildNative builds the sample app name for linux/amd64 once, with the
// flags apps uses for its wasm builds, into a temporary module made from
// the embedded source, and returns the program's path.
func buildNative(b *testing.B, name string) string {
	b.Helper()
	src, err := apps.Source(name)
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module strataapp\n\ngo 1.21\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "main.go"), src, 0o644); err != nil {
		b.Fatal(err)
	}
	goCmd, err := exec.LookPath("go")
	if err != nil {
		goCmd = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	bin := filepath.Join(dir, name)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goCmd, "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w", "-o", bin, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOOS=linux", "GOARCH=amd64", "CGO_ENABLED=0",
		"GOFLAGS=", "GOWORK=off", "GOTOOLCHAIN=local")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("go build of %s for linux/amd64: %v\n%s", name, err, out)
	}
	return bin
}
