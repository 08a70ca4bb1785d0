package web_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"strata/fs"
	"strata/fs/memfs"
	"strata/tiers/web"
)

// FuzzAPI sends arbitrary requests to the API of a server over an
// in-memory namespace: no request may panic or fail with 500, every API
// error is a JSON sentence, and nothing is ever made outside /store.
//
//	go test -run '^$' -fuzz FuzzAPI -fuzztime 1m ./tiers/web/
func FuzzAPI(f *testing.F) {
	for _, seed := range []struct {
		method byte
		path   string
		body   []byte
		auth   bool
	}{
		{0, "/api/store/", nil, true},
		{1, "/api/store/a.txt", []byte("hello"), true},
		{2, "/api/store/d?op=mkdir", nil, true},
		{2, "/api/store/a.txt?op=rename&to=d/b.txt", nil, true},
		{3, "/api/store/a.txt", nil, true},
		{0, "/api/store/..%2F..%2Fstatus", nil, true},
		{1, "/api/store/%2e%2e/x", []byte("x"), true},
		{2, "/api/login", []byte(`{"token":"stk_x"}`), false},
		{0, "/api/whoami", nil, false},
		{0, "/api/apps/UPPER/info", nil, true},
		{2, "/api/apps/upper/call", []byte("in"), true},
		{0, "/api/probe?n=99999999", nil, true},
		{0, "/", nil, false},
		{0, "/static/../../etc/passwd", nil, false},
	} {
		f.Add(seed.method, seed.path, seed.body, seed.auth)
	}
	dir := f.TempDir()
	tokens, err := web.OpenTokens(filepath.Join(dir, "tokens.json"))
	if err != nil {
		f.Fatal(err)
	}
	tok, _, err := tokens.Issue("alice")
	if err != nil {
		f.Fatal(err)
	}
	ctx := context.Background()
	root := memfs.New()
	if _, err := root.Mkdir(ctx, "store", 0o755); err != nil {
		f.Fatal(err)
	}
	if _, err := root.Mkdir(ctx, "apps", 0o755); err != nil {
		f.Fatal(err)
	}
	srv, err := web.New(web.Config{
		Tier: "edge/fuzz", Tokens: tokens, MaxUpload: 1 << 16, MaxInput: 1 << 12,
		Root: func(context.Context, string) (fs.Dir, error) { return root, nil },
	})
	if err != nil {
		f.Fatal(err)
	}
	methods := []string{"GET", "PUT", "POST", "DELETE", "HEAD", "PATCH"}
	f.Fuzz(func(t *testing.T, method byte, path string, body []byte, auth bool) {
		if !strings.HasPrefix(path, "/") || strings.ContainsAny(path, " \r\n\t#") {
			return // not a request line a client can send
		}
		req, err := http.NewRequest(methods[int(method)%len(methods)], "http://edge.test"+path, bytes.NewReader(body))
		if err != nil {
			return
		}
		if auth {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		if rec.Code == http.StatusInternalServerError {
			t.Fatalf("%s %s: 500: %s", req.Method, path, rec.Body.Bytes())
		}
		if rec.Code >= 400 && strings.HasPrefix(req.URL.Path, "/api/") && req.Method != "HEAD" {
			var e struct{ Error, Kind string }
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error == "" || e.Kind == "" {
				t.Fatalf("%s %s: %d with a body that is not a JSON error: %q", req.Method, path, rec.Code, rec.Body.Bytes())
			}
		}
		list, err := root.ReadDir(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, info := range list {
			if info.Name != "store" && info.Name != "apps" {
				t.Fatalf("%s %s made %q outside the store", req.Method, path, info.Name)
			}
		}
	})
}
