package main

import (
	"context"
	"flag"
	"fmt"
	"strconv"
	"strings"

	"strata/tiers/keyring"
	"strata/tiers/up"
)

func keygen(ctx context.Context, args []string) error {
	fl := flag.NewFlagSet("keygen", flag.ContinueOnError)
	dir := fl.String("keys", "", "keyring `directory` (made with its key-encryption key if missing)")
	groups := fl.Int("groups", 1, "make the link A and link B keysets of groups g1..gN")
	clients := fl.String("clients", "", "comma-separated client `names` to make keysets for")
	rotate := fl.String("rotate", "", "add a new primary key to the keyset of `purpose` (link-a/g1, link-b/g1, client/NAME)")
	retire := fl.String("retire", "", "remove key ID from a keyset: `purpose:ID`")
	list := fl.Bool("list", false, "list the keysets and their key IDs (primary first)")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if *dir == "" || fl.NArg() != 0 {
		fl.Usage()
		return fmt.Errorf("keygen: -keys DIR is required and no arguments are taken")
	}
	log, err := newLogger("warn")
	if err != nil {
		return err
	}
	ring, err := keyring.Open(*dir, log)
	if err != nil {
		return err
	}
	switch {
	case *rotate != "":
		id, err := ring.Rotate(keyring.Purpose(*rotate))
		if err != nil {
			return err
		}
		fmt.Printf("%s: new primary key %d; the old keys stay valid until retired\n", *rotate, id)
		return nil
	case *retire != "":
		p, ids, ok := strings.Cut(*retire, ":")
		id, err := strconv.ParseUint(ids, 10, 32)
		if !ok || err != nil {
			return fmt.Errorf("keygen: -retire takes purpose:ID, not %q", *retire)
		}
		if err := ring.Retire(keyring.Purpose(p), uint32(id)); err != nil {
			return err
		}
		fmt.Printf("%s: key %d retired\n", p, id)
		return nil
	}
	var purposes []keyring.Purpose
	for i := 1; i <= *groups; i++ {
		purposes = append(purposes, keyring.LinkA(up.GroupName(i)), keyring.LinkB(up.GroupName(i)))
	}
	for _, c := range strings.Split(*clients, ",") {
		if c = strings.TrimSpace(c); c != "" {
			purposes = append(purposes, keyring.Client(c))
		}
	}
	for _, p := range purposes {
		made, err := ring.Ensure(p)
		if err != nil {
			return err
		}
		if made {
			fmt.Printf("made %s (%s) in %s\n", p, p.Method(), ring.Path(p))
		}
	}
	if *list {
		cs, err := ring.Clients()
		if err != nil {
			return err
		}
		all := []keyring.Purpose{}
		for i := 1; i <= *groups; i++ {
			all = append(all, keyring.LinkA(up.GroupName(i)), keyring.LinkB(up.GroupName(i)))
		}
		for _, c := range cs {
			all = append(all, keyring.Client(c))
		}
		for _, p := range all {
			ids, err := ring.Keys(p)
			if err != nil {
				return err
			}
			fmt.Printf("%-16s %-20s keys %v\n", p, p.Method(), ids)
		}
	}
	return nil
}
