package app

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/credflow/credflow/proxy/revoke"
)

// revokeUsage is the usage of `credflow revoke`; its continuation lines
// line up under "usage: ".
const revokeUsage = "credflow revoke add    (-redis ADDR | -file PATH) (-spiffe-id ID|PATTERN | -serial HEX | -jti JTI) [-ttl 24h] [-reason TEXT]\n" +
	"       credflow revoke list   (-redis ADDR | -file PATH)\n" +
	"       credflow revoke remove (-redis ADDR | -file PATH) (-spiffe-id ID|PATTERN | -serial HEX | -jti JTI)\n" +
	"       with -redis, -redis-key KEY names the hash (default " + revoke.DefaultKey + ")"

// revokeTimeout bounds one revoke command's work with its store.
const revokeTimeout = 10 * time.Second

// revokeFlags are the flags of `credflow revoke`.
type revokeFlags struct {
	redis, redisKey, file string
	spiffeID, serial, jti string
	ttl                   time.Duration
	reason                string
}

// runRevoke implements `credflow revoke add|list|remove`.
func runRevoke(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: want add, list or remove", errUsage)
	}
	op := args[0]
	var f revokeFlags
	fs := newFlagSet("revoke "+op, revokeUsage, stderr)
	fs.StringVar(&f.redis, "redis", "", "the Redis server (host:port) the sidecars read the list from")
	fs.StringVar(&f.redisKey, "redis-key", revoke.DefaultKey, "with -redis: the hash of the entries; edits are published on KEY:events")
	fs.StringVar(&f.file, "file", "", "the revocation file (JSON) to edit instead; add creates it")
	switch op {
	case "add", "remove":
		fs.StringVar(&f.spiffeID, "spiffe-id", "", "revoke a SPIFFE ID, or a pattern (spiffe://td/path/*, spiffe://td)")
		fs.StringVar(&f.serial, "serial", "", "revoke a certificate by serial number, hex as openssl prints it")
		fs.StringVar(&f.jti, "jti", "", "revoke a transaction token by its jti")
		if op == "add" {
			fs.DurationVar(&f.ttl, "ttl", 24*time.Hour, "how long the revocation lasts; 0 is for ever")
			fs.StringVar(&f.reason, "reason", "", "why, for the operators (shown by list)")
		}
	case "list":
	default:
		return fmt.Errorf("%w: unknown revoke command %q (want add, list or remove)", errUsage, op)
	}
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	var e revoke.Entry
	if op != "list" {
		var err error
		if e, err = f.entry(); err != nil {
			return err
		}
	}
	store, closeStore, err := f.store()
	if err != nil {
		return err
	}
	defer closeStore()
	ctx, cancel := context.WithTimeout(ctx, revokeTimeout)
	defer cancel()

	switch op {
	case "add":
		if err := store.Add(ctx, e); err != nil {
			return err
		}
		expires := "never"
		if !e.Expires.IsZero() {
			expires = e.Expires.Format(time.RFC3339)
		}
		_, err = fmt.Fprintf(stdout, "revoked %s until %s\n", e.Key(), expires)
		return err
	case "remove":
		if err := store.Remove(ctx, e.Key()); err != nil {
			return err
		}
		_, err = fmt.Fprintf(stdout, "removed %s\n", e.Key())
		return err
	default:
		entries, err := store.List(ctx)
		if err != nil {
			return err
		}
		return printRevocations(stdout, entries, time.Now())
	}
}

// entry is the entry the selector flags name, with -ttl and -reason
// applied.
func (f revokeFlags) entry() (revoke.Entry, error) {
	var e revoke.Entry
	n := 0
	for _, sel := range []struct {
		kind  revoke.Kind
		value string
	}{{revoke.SPIFFEID, f.spiffeID}, {revoke.Serial, f.serial}, {revoke.JTI, f.jti}} {
		if sel.value != "" {
			e.Kind, e.Value = sel.kind, sel.value
			n++
		}
	}
	if n != 1 {
		return revoke.Entry{}, fmt.Errorf("%w: want exactly one of -spiffe-id, -serial or -jti", errUsage)
	}
	if f.ttl < 0 {
		return revoke.Entry{}, fmt.Errorf("%w: -ttl %v is negative (0 is for ever)", errUsage, f.ttl)
	}
	now := time.Now().UTC().Truncate(time.Second)
	e.Reason, e.Added = f.reason, now
	if f.ttl > 0 {
		e.Expires = now.Add(f.ttl)
	}
	e, err := e.Canonical()
	if err != nil {
		return revoke.Entry{}, fmt.Errorf("%w: %v", errUsage, err)
	}
	return e, nil
}

// store opens the store -redis or -file names, and returns how to close
// it.
func (f revokeFlags) store() (revoke.Store, func(), error) {
	switch {
	case (f.redis == "") == (f.file == ""):
		return nil, nil, fmt.Errorf("%w: want exactly one of -redis ADDR or -file PATH", errUsage)
	case f.file != "":
		return &revoke.FileStore{Path: f.file}, func() {}, nil
	default:
		c := redis.NewClient(&redis.Options{Addr: f.redis})
		return &revoke.RedisStore{Client: c, Key: f.redisKey}, func() { c.Close() }, nil
	}
}

// printRevocations prints entries as a table.
func printRevocations(w io.Writer, entries []revoke.Entry, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "KIND\tVALUE\tEXPIRES\tREASON")
	for _, e := range entries {
		expires := "never"
		if !e.Expires.IsZero() {
			expires = e.Expires.UTC().Format(time.RFC3339)
			if !e.Live(now) {
				expires += " (expired)"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", e.Kind, e.Value, expires, e.Reason)
	}
	return tw.Flush()
}
