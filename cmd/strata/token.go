package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"strata/tiers/up"
	"strata/tiers/web"
)

// tokenCmd issues, revokes and lists the clients' web tokens.
func tokenCmd(ctx context.Context, args []string) error {
	fl := flag.NewFlagSet("token", flag.ContinueOnError)
	file := fl.String("tokens", "", "web token `file` (default: keys/tokens.json in -dir)")
	dir := fl.String("dir", "strata-data", "`directory` of a strata up hierarchy")
	fl.Usage = func() {
		fmt.Fprintln(fl.Output(), "usage: strata token [-dir DIR | -tokens FILE] issue CLIENT | revoke CLIENT|ID | list")
		fl.PrintDefaults()
	}
	if err := fl.Parse(args); err != nil {
		return err
	}
	path := *file
	if path == "" {
		path = filepath.Join(*dir, "keys", up.TokensFile)
	}
	a := fl.Args()
	if len(a) == 0 {
		fl.Usage()
		return fmt.Errorf("token: issue, revoke or list?")
	}
	tokens, err := web.OpenTokens(path)
	if err != nil {
		return err
	}
	switch {
	case a[0] == "issue" && len(a) == 2:
		tok, e, err := tokens.Issue(a[1])
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "issued token %s for client %s (shown once; %s keeps only its hash)\n", e.ID, e.Client, path)
		fmt.Println(tok)
		return nil
	case a[0] == "revoke" && len(a) == 2:
		done, err := tokens.Revoke(a[1])
		if err != nil {
			return err
		}
		for _, e := range done {
			fmt.Printf("revoked token %s of client %s\n", e.ID, e.Client)
		}
		return nil
	case a[0] == "list" && len(a) == 1:
		list, err := tokens.List()
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tCLIENT\tISSUED\tREVOKED")
		for _, e := range list {
			rev := "-"
			if !e.Revoked.IsZero() {
				rev = e.Revoked.Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", e.ID, e.Client, e.Issued.Format(time.RFC3339), rev)
		}
		return tw.Flush()
	}
	fl.Usage()
	return fmt.Errorf("token: unknown use %q", a)
}
