package credential

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// MaxFileSize bounds a credential file.
const MaxFileSize = 64 << 10

// File is a Source reading a credential from a file: a Kubernetes Secret
// mounted as a volume, say, which the kubelet replaces when the Secret
// changes. The Cache reads it again every Refresh, so a new value is
// served within Refresh of its write. One trailing line end is not part
// of the value. The credential has no expiry; its Version is the file's
// modification time.
type File struct {
	Path string
}

// Fetch reads the file.
func (f File) Fetch(context.Context) (Credential, error) {
	fh, err := os.Open(f.Path)
	if err != nil {
		return Credential{}, err
	}
	defer fh.Close()
	info, err := fh.Stat()
	if err != nil {
		return Credential{}, err
	}
	if !info.Mode().IsRegular() {
		return Credential{}, fmt.Errorf("%s: not a regular file", f.Path)
	}
	b, err := io.ReadAll(io.LimitReader(fh, MaxFileSize+1))
	if err != nil {
		return Credential{}, err
	}
	if len(b) > MaxFileSize {
		return Credential{}, fmt.Errorf("%s: larger than %d bytes", f.Path, MaxFileSize)
	}
	v := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	s, err := NewSecret(v)
	if err != nil {
		// NewSecret's error names the offending byte's offset, never
		// the value.
		return Credential{}, fmt.Errorf("%s: %w", f.Path, err)
	}
	return Credential{Value: s, Version: info.ModTime().UTC().Format(time.RFC3339Nano)}, nil
}
