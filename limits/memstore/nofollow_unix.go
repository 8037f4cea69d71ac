//go:build unix

package memstore

import "syscall"

// openNoFollow makes opening the snapshot fail on a symbolic link and
// return at once on a FIFO, whatever was put at the path after it was
// looked at.
const openNoFollow = syscall.O_NOFOLLOW | syscall.O_NONBLOCK
