// Package apps holds the sample apps a tier runs as WebAssembly: small Go
// programs (upper, wc, sha256, spin) that read a request on standard input
// and write the answer on standard output. Their sources are embedded, so
// Build and BuildAll compile them to WASI preview1 modules from any working
// directory, with the go command of the machine.
package apps

import (
	"bytes"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"strata/fs"
)

//go:embed upper/main.go wc/main.go sha256/main.go spin/main.go
var sources embed.FS

// Names lists the sample apps, in the order a listing shows them.
var Names = []string{"upper", "wc", "sha256", "spin"}

// goMod is the go.mod of the temporary module an app is built in.
const goMod = "module strataapp\n\ngo 1.21\n"

// buildFlags are the flags of go build; they are part of a build's
// recorded source hash, so changing them rebuilds.
var buildFlags = []string{"-trimpath", "-buildvcs=false", "-ldflags=-s -w"}

// wasmMagic starts every WebAssembly module.
const wasmMagic = "\x00asm"

// Source returns the Go source of the sample app name.
func Source(name string) ([]byte, error) {
	if !slices.Contains(Names, name) {
		return nil, fs.E("source", name, fs.NotExist, fmt.Errorf("no sample app is called %q", name))
	}
	src, err := sources.ReadFile(name + "/main.go")
	if err != nil {
		return nil, fs.E("source", name, fs.Other, err)
	}
	return src, nil
}

// Build compiles the sample app name to a wasip1 module with the go
// command found in PATH (or $GOROOT/bin/go), in a temporary module
// directory made from the embedded source, so it works from any working
// directory; it returns the wasm bytes.
func Build(ctx context.Context, name string) ([]byte, error) {
	src, err := Source(name)
	if err != nil {
		return nil, err
	}
	wasm, err := BuildSource(ctx, src)
	if err != nil {
		return nil, fmt.Errorf("apps: building %s: %w", name, err)
	}
	return wasm, nil
}

// BuildSource compiles mainGo, the source of a one-file main package that
// uses only the standard library, to a wasip1 module (GOOS=wasip1
// GOARCH=wasm, no cgo, trimmed paths, no symbol table) and returns the
// module's bytes. A failed build's error includes the go command's output.
func BuildSource(ctx context.Context, mainGo []byte) ([]byte, error) {
	goCmd, err := goCommand()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "strataapp-")
	if err != nil {
		return nil, fmt.Errorf("making a build directory: %w", err)
	}
	defer os.RemoveAll(dir)
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte(goMod), 0o644); err != nil {
		return nil, fmt.Errorf("writing go.mod: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "main.go"), mainGo, 0o644); err != nil {
		return nil, fmt.Errorf("writing main.go: %w", err)
	}
	out := filepath.Join(dir, "app.wasm")
	args := append([]string{"build"}, buildFlags...)
	args = append(args, "-o", out, ".")
	cmd := exec.CommandContext(ctx, goCmd, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0",
		"GOFLAGS=", "GOWORK=off", "GOTOOLCHAIN=local")
	var stderr bytes.Buffer
	cmd.Stdout = &stderr
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("go build stopped: %w", ctx.Err())
		}
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			return nil, fmt.Errorf("go build failed: %w", err)
		}
		return nil, fmt.Errorf("go build failed: %w: %s", err, msg)
	}
	wasm, err := os.ReadFile(out)
	if err != nil {
		return nil, fmt.Errorf("reading the built module: %w", err)
	}
	if !bytes.HasPrefix(wasm, []byte(wasmMagic)) {
		return nil, errors.New("go build wrote a file that is not a wasm module")
	}
	return wasm, nil
}

// goCommand finds the go command: in PATH, else in $GOROOT/bin.
func goCommand() (string, error) {
	if p, err := exec.LookPath("go"); err == nil {
		return p, nil
	}
	if root := os.Getenv("GOROOT"); root != "" {
		p := filepath.Join(root, "bin", "go")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("no go command in PATH or $GOROOT/bin: the sample apps need Go to build")
}

// SourceHash is the hex SHA-256 of what a build of the sample app name
// depends on: its source, the go.mod it is built with and the build flags.
func SourceHash(name string) (string, error) {
	src, err := Source(name)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "strata sample app\x00%s\x00%s\x00%s\x00", name, goMod, strings.Join(buildFlags, " "))
	h.Write(src)
	return hex.EncodeToString(h.Sum(nil)), nil
}

// BuildAll builds every sample into dir/<name>.wasm, reusing a file whose
// recorded source hash matches (so a restart does not rebuild). The hash
// of each module's source is recorded in dir/<name>.wasm.src, written
// after the module, so an interrupted build is redone. It returns the
// path of each app's module by name. Builds run in parallel; the first
// failure is returned after every build ends.
func BuildAll(ctx context.Context, dir string) (map[string]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("apps: making %s: %w", dir, err)
	}
	paths := make(map[string]string, len(Names))
	errs := make([]error, len(Names))
	var wg sync.WaitGroup
	for i, name := range Names {
		path := filepath.Join(dir, name+".wasm")
		paths[name] = path
		wg.Go(func() { errs[i] = buildInto(ctx, name, path) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return paths, nil
}

// Modules builds the sample apps into dir, as BuildAll does, and returns
// each app's module by name.
func Modules(ctx context.Context, dir string) (map[string][]byte, error) {
	paths, err := BuildAll(ctx, dir)
	if err != nil {
		return nil, err
	}
	mods := make(map[string][]byte, len(paths))
	for name, p := range paths {
		if mods[name], err = os.ReadFile(p); err != nil {
			return nil, fmt.Errorf("apps: %w", err)
		}
	}
	return mods, nil
}

// buildInto makes path the module of app name, unless it already is.
func buildInto(ctx context.Context, name, path string) error {
	sum, err := SourceHash(name)
	if err != nil {
		return err
	}
	record := path + ".src"
	if upToDate(path, record, sum) {
		return nil
	}
	wasm, err := Build(ctx, name)
	if err != nil {
		return err
	}
	if err := writeAtomic(path, wasm); err != nil {
		return fmt.Errorf("apps: saving %s: %w", name, err)
	}
	if err := writeAtomic(record, []byte(sum+"\n")); err != nil {
		return fmt.Errorf("apps: recording the source hash of %s: %w", name, err)
	}
	return nil
}

// upToDate reports whether path holds a wasm module and record names sum.
func upToDate(path, record, sum string) bool {
	got, err := os.ReadFile(record)
	if err != nil || strings.TrimSpace(string(got)) != sum {
		return false
	}
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	magic := make([]byte, len(wasmMagic))
	if _, err := io.ReadFull(f, magic); err != nil || string(magic) != wasmMagic {
		return false
	}
	return true
}

// writeAtomic replaces path with data: a reader sees the old file or the
// whole new one.
func writeAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o644)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}
