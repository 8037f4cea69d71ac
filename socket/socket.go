// Package socket reads socket specs in Postfix's syntax (unix:/path,
// inet:host:port) and opens listeners for them.
package socket

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"time"
)

// ParseSpec splits a socket spec in Postfix's syntax, "unix:/path" or
// "inet:host:port", into the network and address for net.Listen.
func ParseSpec(spec string) (network, addr string, err error) {
	kind, rest, ok := strings.Cut(spec, ":")
	if !ok || rest == "" {
		return "", "", fmt.Errorf("socket %q: want unix:/path/to.sock or inet:host:port", spec)
	}
	switch kind {
	case "unix", "local":
		if !strings.HasPrefix(rest, "/") {
			return "", "", fmt.Errorf("socket %q: the unix socket path must be absolute", spec)
		}
		return "unix", rest, nil
	case "inet", "inet6":
		host, port, err := net.SplitHostPort(rest)
		if err != nil {
			return "", "", fmt.Errorf("socket %q: %s (write inet:127.0.0.1:8890 or inet:[::1]:8890)", spec, AddrWhy(err))
		}
		if port == "" {
			return "", "", fmt.Errorf("socket %q: missing port", spec)
		}
		return "tcp", net.JoinHostPort(host, port), nil
	}
	return "", "", fmt.Errorf("socket %q: unknown kind %q (want unix or inet)", spec, kind)
}

// AddrWhy is what an address error of package net says without the
// address, which the caller has quoted already.
func AddrWhy(err error) string {
	var ae *net.AddrError
	if errors.As(err, &ae) {
		return ae.Err
	}
	return err.Error()
}

// Listen opens the listener for a socket spec. A unix socket gets mode 0660
// (the MTA's group must reach it); a stale socket file left by a crash is
// removed, but one that a live process still answers on is not.
func Listen(spec string) (net.Listener, error) {
	network, addr, err := ParseSpec(spec)
	if err != nil {
		return nil, err
	}
	if network == "unix" {
		if err := removeStale(addr); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", spec, err)
	}
	if network == "unix" {
		ln.(*net.UnixListener).SetUnlinkOnClose(true)
		if err := os.Chmod(addr, 0o660); err != nil {
			ln.Close()
			return nil, fmt.Errorf("listen on %s: %w", spec, err)
		}
	}
	return ln, nil
}

func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("socket %s: %w", path, err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("socket %s: a file that is not a socket is in the way", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("socket %s: another process is listening on it", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("socket %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("socket %s: remove stale socket: %w", path, err)
	}
	return nil
}
