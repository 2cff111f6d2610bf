package revoke

import (
	"context"
	"errors"
)

// Store is where the operators edit the deny list: RedisStore or
// FileStore. Sidecars read the same place through RedisSource or
// FileSource.
type Store interface {
	// Add validates e and adds it, replacing the entry with the same Key.
	Add(ctx context.Context, e Entry) error
	// Remove removes the entry whose Key is key; when there is none, the
	// error wraps ErrNotFound.
	Remove(ctx context.Context, key string) error
	// List returns every entry, sorted by Key.
	List(ctx context.Context) ([]Entry, error)
}

// ErrNotFound is wrapped by the error of Store.Remove when no entry has
// the key.
var ErrNotFound = errors.New("revoke: no such entry")
