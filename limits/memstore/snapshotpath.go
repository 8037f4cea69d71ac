package memstore

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// notSnapshotError is a snapshot path that holds something sluice must
// neither read nor replace: reading a FIFO blocks start-up, reading a
// device may act on it, and renaming over a link or another program's
// file destroys what was there.
type notSnapshotError struct {
	path string
	what string // "a named pipe (FIFO)", ...
}

func (e *notSnapshotError) Error() string {
	return fmt.Sprintf("%s is %s, not a sluice counter snapshot; sluice neither reads nor replaces it "+
		"(move it away, or set snapshot to another file)", e.path, e.what)
}

// CheckSnapshotPath refuses a snapshot path that exists and is not a
// regular file holding a sluice snapshot: a symbolic link (never
// followed), a FIFO, a device, a socket, a directory, or a file that does
// not start as a snapshot. A missing or empty file is fine: the store
// creates it. Anything else it cannot tell (a directory it may not
// search, a file it may not read: `sluice check` may run as another user)
// is left to the store, which logs it when it reads or writes.
//
// New calls it, and so should whatever validates a config without
// starting, so that `sluice check` refuses what serve would.
func CheckSnapshotPath(path string) error {
	if path == "" {
		return nil
	}
	f, err := openSnapshot(path)
	if f != nil {
		f.Close()
	}
	if ns := (*notSnapshotError)(nil); errors.As(err, &ns) {
		return err
	}
	return nil
}

// openSnapshot opens the snapshot at path for reading, positioned at its
// start. It looks before it opens, so that a device or a FIFO is never
// opened at all, then opens without following a link and without
// blocking, and checks again what it opened, in case the path changed in
// between. It returns an error wrapping fs.ErrNotExist when there is no
// file, a *notSnapshotError when the path holds something else than a
// snapshot, and other errors as they come.
func openSnapshot(path string) (*os.File, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, &notSnapshotError{path, describeMode(fi.Mode())}
	}
	f, err := os.OpenFile(path, os.O_RDONLY|openNoFollow, 0)
	if errors.Is(err, syscall.ELOOP) {
		return nil, &notSnapshotError{path, describeMode(fs.ModeSymlink)}
	}
	if err != nil {
		return nil, err
	}
	if err := checkHead(f, path); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// checkHead makes sure f is a regular file that is empty or starts as a
// snapshot (a file cut short inside the magic is a damaged snapshot, not
// a foreign file), and rewinds it.
func checkHead(f *os.File, path string) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return &notSnapshotError{path, describeMode(fi.Mode())}
	}
	var head [len(snapMagic)]byte
	n, err := io.ReadFull(f, head[:])
	if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
		return err
	}
	if string(head[:n]) != snapMagic[:n] {
		return &notSnapshotError{path, "a file of other content"}
	}
	_, err = f.Seek(0, io.SeekStart)
	return err
}

func describeMode(m fs.FileMode) string {
	switch {
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe (FIFO)"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	}
	return "not a regular file"
}

// tempPattern names the temporary files a snapshot is written to: beside
// it, so that the rename stays on one file system, and with a random
// part (os.CreateTemp), so that no one can plant anything there first.
func tempPattern(path string) string { return filepath.Base(path) + ".*.tmp" }

// isTempName reports whether name is one os.CreateTemp made from
// tempPattern(path): the random part is decimal digits.
func isTempName(path, name string) bool {
	prefix, suffix := filepath.Base(path)+".", ".tmp"
	if len(name) <= len(prefix)+len(suffix) || !strings.HasPrefix(name, prefix) || !strings.HasSuffix(name, suffix) {
		return false
	}
	for _, c := range name[len(prefix) : len(name)-len(suffix)] {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// removeStaleTemps removes the temporary files that writes cut short by a
// crash left beside the snapshot. Only regular files go: what is not
// sluice's is left alone.
func removeStaleTemps(path string) (removed []string) {
	dir := filepath.Dir(path)
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Type().IsRegular() && isTempName(path, e.Name()) {
			name := filepath.Join(dir, e.Name())
			if os.Remove(name) == nil {
				removed = append(removed, name)
			}
		}
	}
	return removed
}
