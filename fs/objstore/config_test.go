package objstore

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"strata/fs"
)

func TestParseURL(t *testing.T) {
	good := []struct {
		url  string
		want Config
	}{
		{"s3://bucket", Config{Bucket: "bucket", Endpoint: DefaultEndpoint, Secure: true}},
		{"s3://bucket/", Config{Bucket: "bucket", Endpoint: DefaultEndpoint, Secure: true}},
		{"s3://my-bucket/edge1/client-a/?endpoint=127.0.0.1:9000&region=eu-west-1&secure=false",
			Config{Bucket: "my-bucket", Prefix: "edge1/client-a", Endpoint: "127.0.0.1:9000", Region: "eu-west-1"}},
		{"s3://b.dots/p?endpoint=s3.example.com", Config{Bucket: "b.dots", Prefix: "p", Endpoint: "s3.example.com", Secure: true}},
		{"s3://bkt/a%20b?endpoint=[::1]:7070&secure=true", Config{Bucket: "bkt", Prefix: "a b", Endpoint: "[::1]:7070", Secure: true}},
	}
	for _, tc := range good {
		got, err := ParseURL(tc.url)
		if err != nil {
			t.Errorf("ParseURL(%q): %v", tc.url, err)
			continue
		}
		if got.Bucket != tc.want.Bucket || got.Prefix != tc.want.Prefix || got.Endpoint != tc.want.Endpoint ||
			got.Region != tc.want.Region || got.Secure != tc.want.Secure {
			t.Errorf("ParseURL(%q) = %+v, want %+v", tc.url, got, tc.want)
		}
	}
	bad := []struct{ url, says string }{
		{"", "scheme"},
		{"http://bucket/p", `scheme "http"`},
		{"s3:bucket/p", "two slashes"},
		{"s3:///p", "no bucket"},
		{"s3://Bad_Bucket/p", "bad bucket name"},
		{"s3://ab/p", "bad bucket name"},
		{"s3://bucket:9000/p", "?endpoint=HOST:PORT"},
		{"s3://key:secret@bucket/p", "credentials do not belong in the URL"},
		{"s3://bucket/a/../b", `element ".."`},
		{"s3://bucket/a//b", `element ""`},
		{"s3://bucket/./b", `element "."`},
		{"s3://bucket/a%00b", "NUL"},
		{"s3://bucket/p?endpoint=", "empty endpoint"},
		{"s3://bucket/p?endpoint=http://host:9000", "without a scheme"},
		{"s3://bucket/p?endpoint=host:port", `bad port "port"`},
		{"s3://bucket/p?endpoint=host:99999", "bad port"},
		{"s3://bucket/p?secure=maybe", "want true or false"},
		{"s3://bucket/p?region=", "bad region"},
		{"s3://bucket/p?endpont=host:1", `unknown parameter "endpont"`},
		{"s3://bucket/p?region=a&region=b", "given 2 times"},
		{"s3://bucket/p#frag", "fragment"},
		{"s3://bucket/p?%zz", "bad query"},
	}
	for _, tc := range bad {
		_, err := ParseURL(tc.url)
		if err == nil {
			t.Errorf("ParseURL(%q): no error", tc.url)
			continue
		}
		if fs.KindOf(err) != fs.Invalid || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("ParseURL(%q): %v (kind %v); want an invalid argument saying %q", tc.url, err, fs.KindOf(err), tc.says)
		}
		if strings.Contains(err.Error(), "secret") && !strings.Contains(err.Error(), "credentials do not") {
			t.Errorf("ParseURL(%q): the error shows the secret: %v", tc.url, err)
		}
	}
	if _, err := ParseURL("s3://key:secret@bucket/p"); err != nil && strings.Contains(err.Error(), "key:secret") {
		t.Errorf("the error shows the credentials: %v", err)
	}
}

// TestOpenErrors: a missing bucket, refused credentials, no credentials
// and an unreachable server each fail Open with an error that says so.
func TestOpenErrors(t *testing.T) {
	bucket := newBucket(t)
	base := config(t, bucket, "p")

	cfg := base
	cfg.Bucket = "no-such-bucket"
	_, err := Open(ctx, cfg)
	wantKind(t, "open a missing bucket", err, fs.NotExist)
	wantText(t, err, `bucket "no-such-bucket" does not exist at `+base.Endpoint)

	cfg = base
	cfg.Credentials = &Credentials{AccessKeyID: base.Credentials.AccessKeyID, SecretAccessKey: "wrong-secret"}
	_, err = Open(ctx, cfg)
	wantKind(t, "open with a wrong secret", err, fs.Permission)
	wantText(t, err, "refused the credentials from the configuration")
	if err != nil && strings.Contains(err.Error(), "wrong-secret") {
		t.Errorf("the error shows the secret: %v", err)
	}

	cfg.Credentials = &Credentials{AccessKeyID: "nobody", SecretAccessKey: "wrong-secret"}
	_, err = Open(ctx, cfg)
	wantKind(t, "open with an unknown access key", err, fs.Permission)
	wantText(t, err, "refused the credentials")

	cfg = base
	cfg.Credentials = &Credentials{AccessKeyID: base.Credentials.AccessKeyID}
	_, err = Open(ctx, cfg)
	wantKind(t, "open with no secret", err, fs.Permission)

	// A closed port: refused at once.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln.Addr().String()
	ln.Close()
	cfg = base
	cfg.Endpoint = closed
	cfg.Timeout = 2 * time.Second
	start := time.Now()
	_, err = Open(ctx, cfg)
	if k := fs.KindOf(err); k != fs.Unavailable && k != fs.Timeout {
		t.Errorf("open at a closed port: %v (kind %v), want unavailable", err, k)
	}
	wantText(t, err, "cannot reach the object store at "+closed)

	// A server that accepts and never answers: the deadline ends it.
	hole, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hole.Close()
	go func() {
		for {
			c, err := hole.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	cfg.Endpoint = hole.Addr().String()
	cfg.Timeout = 500 * time.Millisecond
	start = time.Now()
	_, err = Open(ctx, cfg)
	wantKind(t, "open at a server that never answers", err, fs.Timeout)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("open at a server that never answers took %v with a 500ms timeout", d)
	}

	// Bad configurations.
	for _, c := range []func(*Config){
		func(c *Config) { c.Bucket = "" },
		func(c *Config) { c.Prefix = "a/../b" },
		func(c *Config) { c.Endpoint = "http://x" },
		func(c *Config) { c.PartSize = 1 << 20 },
		func(c *Config) { c.Timeout = -1 },
	} {
		cfg := base
		c(&cfg)
		_, err := Open(ctx, cfg)
		wantKind(t, "open with a bad configuration", err, fs.Invalid)
	}
}

func wantText(t testing.TB, err error, text string) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), text) {
		t.Errorf("error %v: want it to say %q", err, text)
	}
}

// TestCredentials: from the environment, from a credentials file and its
// profile, or none (a clear error). ParseURL leaves them to Open.
func TestCredentials(t *testing.T) {
	bucket := newBucket(t)
	g := gateway(t)
	url := g.URL(bucket, "creds") + "&region=" + g.Region
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_SESSION_TOKEN", "")
	open := func() (*Store, error) {
		cfg, err := ParseURL(url)
		if err != nil {
			t.Fatal(err)
		}
		cfg.StagingDir = t.TempDir()
		s, err := Open(ctx, cfg)
		if err == nil {
			t.Cleanup(func() { s.Close() })
		}
		return s, err
	}

	// None at all.
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	_, err := open()
	wantKind(t, "open without credentials", err, fs.Permission)
	wantText(t, err, "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or put them in the credentials file "+filepath.Join(home, ".aws", "credentials"))

	// From the environment.
	g.Env(t)
	s, err := open()
	if err != nil {
		t.Fatal(err)
	}
	put(t, s.Root(), "from-env", []byte("env"))
	t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong")
	_, err = open()
	wantText(t, err, "refused the credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")

	// From the default file, then a named one with a profile.
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	os.MkdirAll(filepath.Join(home, ".aws"), 0o700)
	writeFile(t, filepath.Join(home, ".aws", "credentials"), "[default]\naws_access_key_id = "+g.AccessKey+"\naws_secret_access_key = "+g.SecretKey+"\n")
	s, err = open()
	if err != nil {
		t.Fatal(err)
	}
	expect(t, s.Root(), "from-env", "env")

	file := filepath.Join(t.TempDir(), "creds")
	writeFile(t, file, "[default]\naws_access_key_id = nobody\naws_secret_access_key = wrong\n[strata]\naws_access_key_id = "+g.AccessKey+"\naws_secret_access_key = "+g.SecretKey+"\n")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", file)
	_, err = open()
	wantText(t, err, "refused the credentials from "+file+" (profile default)")
	t.Setenv("AWS_PROFILE", "strata")
	if _, err = open(); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AWS_PROFILE", "missing")
	_, err = open()
	wantKind(t, "open with a missing profile", err, fs.Permission)
	wantText(t, err, "(profile missing) cannot be used")
}

func writeFile(t testing.TB, name, data string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}
