package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"strata/fs"
	"strata/mount/remote"
	"strata/tiers/call"
	"strata/tiers/tier"
	"strata/tiers/up"
)

// traceCmd prints an invocation's trace from the edge: the edge's record
// of the request, then every tier above that it reached.
//
//	strata trace [-dir DIR | -addr ADDR] [-client NAME] REQUEST-ID
//	strata trace [-dir DIR | -addr ADDR] -list
func traceCmd(ctx context.Context, args []string) error {
	fl := flag.NewFlagSet("trace", flag.ContinueOnError)
	tg := targetFlags(fl, "edge")
	list := fl.Bool("list", false, "list the request IDs the edge has traces of, oldest first, instead")
	fl.Usage = func() {
		fmt.Fprintln(fl.Output(), "usage: strata trace [flags] REQUEST-ID\n       strata trace [flags] -list")
		fl.PrintDefaults()
	}
	if err := fl.Parse(args); err != nil {
		return err
	}
	if *list != (fl.NArg() == 0) || fl.NArg() > 1 {
		fl.Usage()
		return fmt.Errorf("trace: name one request ID, or -list")
	}
	ctx, cancel := context.WithTimeout(ctx, *tg.timeout)
	defer cancel()
	var id string
	if !*list {
		id = fl.Arg(0)
		if _, _, err := call.ParseID(id); err != nil {
			return fmt.Errorf("trace: %w", err)
		}
	}
	tree, err := tg.open(ctx, "edge")
	if err != nil {
		return err
	}
	defer tree.Close()
	name := tree.State().Name
	if name == "" {
		name = "the tier at " + tree.State().Addr
	}
	if *list {
		n, err := fs.Walk(ctx, tree.Root(), "trace")
		if err != nil {
			return fmt.Errorf("trace: %w", err)
		}
		d, ok := n.(fs.Dir)
		if !ok {
			return fmt.Errorf("trace: %s's trace is not a directory", name)
		}
		infos, err := d.ReadDir(ctx)
		if err != nil {
			return fmt.Errorf("trace: %w", err)
		}
		sort.SliceStable(infos, func(i, j int) bool { return infos[i].ModTime.Before(infos[j].ModTime) })
		for _, in := range infos {
			fmt.Printf("%s %s\n", in.ModTime.UTC().Format("2006-01-02T15:04:05.000Z07:00"), in.Name)
		}
		return nil
	}
	n, err := fs.Walk(ctx, tree.Root(), "trace/"+id)
	if fs.KindOf(err) == fs.NotExist {
		return fmt.Errorf("trace: %s has no record of request %s: it did not pass there, or it is older than %v or than the last %d requests", name, id, tier.DefaultTraceTTL, tier.DefaultTraces)
	}
	if err != nil {
		return fmt.Errorf("trace: %w", err)
	}
	f, ok := n.(fs.File)
	if !ok {
		return fmt.Errorf("trace: %s's trace/%s is not a file", name, id)
	}
	b, err := tier.Query(ctx, f)
	if fs.KindOf(err) == fs.NotExist {
		return fmt.Errorf("trace: %s has no record of request %s (any more)", name, id)
	}
	if err != nil {
		return fmt.Errorf("trace: %w", err)
	}
	os.Stdout.Write(b)
	return nil
}

// statusTreeCmd prints the hierarchy's status from its lowest tiers: each
// edge's /status has a section for the edge and every tier above it, so
// one read per group shows them all. A group whose edge does not answer
// is read from its app edge instead (and the cloud from the cloud, once).
// With -addr it prints that one tier's /status, its parents' included. It
// fails, after printing what it got, if a tier did not answer.
//
//	strata status [-dir DIR | -addr ADDR] [-timeout 3s]
func statusTreeCmd(ctx context.Context, args []string) error {
	fl := flag.NewFlagSet("status", flag.ContinueOnError)
	dir := fl.String("dir", "strata-data", "`directory` of a hierarchy started by strata up")
	addr := fl.String("addr", "", "plain 9P `address` of one tier to ask instead")
	timeout := fl.Duration("timeout", 3*time.Second, "how long each tier's answer may take, its parents' sections included")
	fl.Usage = func() {
		fmt.Fprintln(fl.Output(), "usage: strata status [flags]")
		fl.PrintDefaults()
	}
	if err := fl.Parse(args); err != nil {
		return err
	}
	if fl.NArg() != 0 {
		fl.Usage()
		return fmt.Errorf("status: no arguments expected")
	}
	ask := func(e up.Entry) ([]byte, error) {
		ctx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		tree, err := remote.Dial(ctx, "tcp", e.Local, remote.Options{Name: e.Name, Timeout: *timeout})
		if err != nil {
			return nil, err
		}
		defer tree.Close()
		return tier.Query(ctx, tree.File("status"))
	}
	var out bytes.Buffer
	down := func(e up.Entry, err error) {
		fmt.Fprintf(&out, "# %s\nunreachable %s\n", e.Name, call.OneLine(err.Error()))
	}
	if *addr != "" {
		e := up.Entry{Name: *addr, Local: *addr}
		b, err := ask(e)
		if err != nil {
			down(e, err)
		}
		out.Write(b)
	} else {
		m, err := up.ReadManifest(*dir)
		if err != nil {
			return err
		}
		// Groups in the manifest's order, each from its lowest tier that
		// answers.
		var groups []string
		for _, e := range m.Tiers {
			if e.Role == "edge" {
				groups = append(groups, e.Group)
			}
		}
		cloudShown := false
		for i, g := range groups {
			if i > 0 {
				out.WriteString("\n")
			}
			for _, role := range []string{"edge", "appedge", "cloud"} {
				grp := g
				if role == "cloud" {
					if cloudShown {
						break
					}
					grp = ""
				}
				e, ok := m.Find(role, grp)
				if !ok {
					continue
				}
				b, err := ask(e)
				if err != nil {
					down(e, err)
					continue
				}
				out.Write(b)
				cloudShown = true // every answer includes the cloud's section
				break
			}
		}
		if len(groups) == 0 { // a manifest without edges: every tier
			for _, e := range m.Tiers {
				b, err := ask(e)
				if err != nil {
					down(e, err)
					continue
				}
				out.Write(b)
			}
		}
	}
	os.Stdout.Write(out.Bytes())
	if silent := unreachable(out.String()); len(silent) > 0 {
		return fmt.Errorf("status: did not answer: %s", strings.Join(silent, ", "))
	}
	return nil
}

// unreachable returns the names of the sections of a /status text that
// say only that their tier did not answer, each once.
func unreachable(text string) []string {
	var names []string
	seen := map[string]bool{}
	lines := strings.Split(text, "\n")
	for i := 0; i+1 < len(lines); i++ {
		name, ok := strings.CutPrefix(lines[i], "# ")
		if !ok || !strings.HasPrefix(lines[i+1], "unreachable ") || seen[name] {
			continue
		}
		seen[name] = true
		names = append(names, name)
	}
	return names
}
