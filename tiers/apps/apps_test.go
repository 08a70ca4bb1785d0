package apps

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"strata/fs"
)

func TestBuildAll(t *testing.T) {
	if testing.Short() {
		t.Skip("builds four Go programs")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dir := t.TempDir()
	paths, err := BuildAll(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) != len(Names) {
		t.Fatalf("BuildAll returned %d paths, want %d", len(paths), len(Names))
	}
	mtimes := map[string]time.Time{}
	for _, name := range Names {
		p := paths[name]
		if p != filepath.Join(dir, name+".wasm") {
			t.Errorf("%s: path %s", name, p)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if len(data) <= len(wasmMagic) || !bytes.HasPrefix(data, []byte(wasmMagic)) {
			t.Errorf("%s: %d bytes that do not start with the wasm magic", name, len(data))
		}
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		mtimes[name] = st.ModTime()
		t.Logf("%s: %d bytes", name, len(data))
	}

	// A second call finds every module up to date and rebuilds nothing.
	start := time.Now()
	if _, err := BuildAll(ctx, dir); err != nil {
		t.Fatal(err)
	}
	for _, name := range Names {
		st, err := os.Stat(paths[name])
		if err != nil {
			t.Fatal(err)
		}
		if !st.ModTime().Equal(mtimes[name]) {
			t.Errorf("%s was rebuilt although its source did not change", name)
		}
	}
	t.Logf("second BuildAll took %v", time.Since(start))

	// A record that does not match makes that one app build again.
	if err := os.WriteFile(paths["wc"]+".src", []byte("stale\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := BuildAll(ctx, dir); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(paths["wc"] + ".src")
	if err != nil {
		t.Fatal(err)
	}
	want, err := SourceHash("wc")
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want+"\n" {
		t.Errorf("wc record after a rebuild = %q, want %q", got, want)
	}
}

func TestBuildUnknown(t *testing.T) {
	_, err := Build(context.Background(), "nosuchapp")
	if err == nil {
		t.Fatal("Build of an unknown app succeeded")
	}
	if fs.KindOf(err) != fs.NotExist {
		t.Errorf("kind of %v = %v, want NotExist", err, fs.KindOf(err))
	}
}

func TestBuildSourceError(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the go command")
	}
	_, err := BuildSource(context.Background(), []byte("package main\n\nfunc main() { undefined() }\n"))
	if err == nil {
		t.Fatal("a program that does not compile built")
	}
	if !bytes.Contains([]byte(err.Error()), []byte("undefined")) {
		t.Errorf("error does not carry the compiler's message: %v", err)
	}
}

func TestSources(t *testing.T) {
	for _, name := range Names {
		src, err := Source(name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(src, []byte("// Command "+name)) {
			t.Errorf("%s: source does not start with its doc comment", name)
		}
	}
}
