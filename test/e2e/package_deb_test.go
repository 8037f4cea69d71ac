package e2e

// The Debian package, installed on this machine as an admin would: built
// by packaging/build-deb, checked by lintian, installed with dpkg, its
// conffile checked, its units verified, its binary run as the sluice user
// behind a real Postfix through the packaged socket in Postfix's chroot
// layout, upgraded from the previous build with a counter kept, and
// purged without a trace. No systemd runs here: the test starts and stops
// sluice the way the unit would. It changes the machine, so it puts it
// back (dpkg --purge) even when it fails.

import (
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"sluice/test/mta"
	"sluice/test/testenv"
)

const (
	pkgConf   = "/etc/sluice/sluice.toml"
	pkgSocket = "/var/spool/postfix/sluice/sluice.sock"
	pkgSnap   = "/var/lib/sluice/counters.snap"
)

// The limit the test adds to the installed config, as an admin would:
// 10 messages per sender, Postfix's loopback not trusted.
const pkgLimit = `
# added by the package test
[[limit]]
name = "e2e-per-sender"
count = "messages"
per = "sender"
rate = "10/1h"
`

// TestPackageDebian proves that the package installs, runs sluice as its
// user behind Postfix on the packaged socket, keeps a counter across an
// upgrade, and purges without a trace.
func TestPackageDebian(t *testing.T) {
	testenv.Require(t)
	if os.Geteuid() != 0 {
		t.Fatal("the package test installs a .deb: run it as root")
	}
	for _, tool := range []string{"dpkg", "dpkg-deb", "lintian", "setpriv", "systemd-analyze", "man", "go"} {
		testenv.Tool(t, tool)
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if installed() {
		t.Log("a sluice package is installed (left by a crashed run?): purging it first")
		purge(t)
	}
	before := machineState(t)
	// What a purge must remove cannot be there already: the comparison
	// would miss it.
	for _, l := range before {
		if strings.Contains(l, "sluice") {
			t.Fatalf("this machine holds sluice's traces without the package (a broken purge?), remove them first: %s", l)
		}
	}

	version := strings.TrimSpace(run(t, "", "sed", "-n", `1s/^sluice (\([^)]*\)).*/\1/p`, filepath.Join(root, "packaging/changelog")))
	prevVersion := version + "~prev1"
	prev := buildDeb(t, root, prevVersion)
	cur := buildDeb(t, root, "")
	if !strings.Contains(cur, "sluice_"+version+"_") {
		t.Fatalf("build-deb wrote %s, want the changelog's version %s in its name", cur, version)
	}
	if v := strings.TrimSpace(run(t, "", "dpkg-deb", "-f", cur, "Version")); v != version {
		t.Errorf("the package's version is %q, the changelog's %q", v, version)
	}

	// lintian: no error; what else it says is logged.
	out, _ := exec.Command("lintian", "--pedantic", "--display-info", cur).CombinedOutput()
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if strings.HasPrefix(l, "E:") || strings.Contains(l, "lintian") && strings.Contains(l, "rror") {
			t.Errorf("lintian: %s", l)
		} else if l != "" {
			t.Logf("lintian: %s", l)
		}
	}

	// From here on the machine is changed: put it back whatever happens.
	var sluice *testenv.Process
	t.Cleanup(func() {
		if sluice != nil {
			sluice.Stop(syscall.SIGKILL, 5*time.Second)
		}
		if installed() {
			purge(t)
		}
	})

	// The previous build, fresh.
	run(t, "", "dpkg", "-i", prev)
	if got := run(t, "", "/usr/sbin/sluice", "version"); !strings.HasPrefix(got, "sluice "+prevVersion+" (commit ") {
		t.Errorf("sluice version of the previous build: %q, want version %s", got, prevVersion)
	}
	wantOwner(t, "/etc/sluice", "root", "sluice", 0o750|fs.ModeDir)
	wantOwner(t, pkgConf, "root", "sluice", 0o640)
	wantOwner(t, "/var/lib/sluice", "sluice", "sluice", 0o700|fs.ModeDir)
	wantOwner(t, filepath.Dir(pkgSocket), "sluice", "postfix", 0o750|fs.ModeDir|fs.ModeSetgid)
	u, err := user.Lookup("sluice")
	if err != nil {
		t.Fatalf("the package made no sluice user: %v", err)
	}
	if gids, _ := u.GroupIds(); len(gids) != 1 {
		t.Errorf("user sluice is in groups %v, want its own only", gids)
	}

	// The admin adds a limit to the installed config; sluice check takes it.
	f, err := os.OpenFile(pkgConf, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(pkgLimit)
	f.Close()
	if out := run(t, "", "/usr/sbin/sluice", "check", "-config", pkgConf); !strings.Contains(out, pkgConf+": OK (4 limits, listen unix:"+pkgSocket) {
		t.Errorf("sluice check on the installed config: %q", out)
	}

	// sluice as the unit runs it, Postfix through the packaged socket:
	// an absolute path, as this Postfix is not chrooted and has a queue
	// of its own; a chrooted one names it unix:sluice/sluice.sock.
	sluice = startPackaged(t)
	wantOwner(t, pkgSocket, "sluice", "postfix", 0o660|fs.ModeSocket)
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: "unix:" + pkgSocket})
	c := session(t, pf.Addr, "192.0.2.1")
	wantTempfailAtMail(t, sendN(t, c, "alice@example.test", 6), 0, -1)
	c.Quit()

	// Upgrade as systemd would: SIGTERM (the snapshot is written), the
	// new package in, sluice started again.
	if clean, err := sluice.Stop(syscall.SIGTERM, 30*time.Second); !clean || err != nil {
		t.Fatalf("sluice on SIGTERM: clean %v, %v", clean, err)
	}
	sluice = nil
	if _, err := os.Stat(pkgSnap); err != nil {
		t.Fatalf("no snapshot after SIGTERM: %v", err)
	}
	run(t, "", "dpkg", "-i", "--force-confold", cur)
	if got := run(t, "", "/usr/sbin/sluice", "version"); !strings.HasPrefix(got, "sluice "+version+" (commit ") {
		t.Errorf("sluice version after the upgrade: %q, want version %s", got, version)
	}
	if b, _ := os.ReadFile(pkgConf); !strings.Contains(string(b), "e2e-per-sender") {
		t.Error("the upgrade replaced the admin's config")
	}
	if _, err := os.Stat(pkgSnap); err != nil {
		t.Fatalf("the upgrade lost the snapshot: %v", err)
	}
	sluice = startPackaged(t)

	// 6 before the upgrade, 4 more accepted, the 11th refused: the
	// counter came through.
	c = session(t, pf.Addr, "192.0.2.1")
	wantTempfailAtMail(t, sendN(t, c, "alice@example.test", 5), 5, 5)
	c.Quit()

	// The installed units: verified with their man pages, and hardened.
	if out, err := exec.Command("systemd-analyze", "verify", "sluice.service", "sluice.socket").CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify on the installed units: %v\n%s", err, out)
	}
	out, _ = exec.Command("systemd-analyze", "security", "--offline=true", "sluice.service").CombinedOutput()
	if score, err := strconv.ParseFloat(exposure(string(out)), 64); err != nil || score > 2.0 {
		t.Errorf("systemd-analyze security: exposure %q, want at most 2.0:\n%s", exposure(string(out)), out)
	} else {
		t.Logf("systemd-analyze security: exposure %.1f", score)
	}
	// The man pages render without a warning.
	for _, page := range []string{"/usr/share/man/man8/sluice.8.gz", "/usr/share/man/man5/sluice.toml.5.gz"} {
		cmd := exec.Command("man", "--warnings", "-l", page)
		cmd.Env = append(os.Environ(), "MANWIDTH=80", "LC_ALL=C.UTF-8")
		var stderr strings.Builder
		cmd.Stderr = &stderr
		text, err := cmd.Output()
		if err != nil || stderr.Len() > 0 || !strings.Contains(string(text), "NAME") {
			t.Errorf("man -l %s: %v\n%s", page, err, stderr.String())
		}
	}

	// Purge: nothing of sluice is left.
	if clean, err := sluice.Stop(syscall.SIGTERM, 30*time.Second); !clean || err != nil {
		t.Errorf("sluice on SIGTERM: clean %v, %v", clean, err)
	}
	sluice = nil
	purge(t)
	after := machineState(t)
	for _, l := range after {
		if !slices.Contains(before, l) {
			t.Errorf("left after the purge: %s", l)
		}
	}
	for _, l := range before {
		if !slices.Contains(after, l) {
			t.Errorf("gone after the purge, there before the install: %s", l)
		}
	}
	pf.WaitDelivered(10, time.Minute)
}

// buildDeb runs packaging/build-deb (as version, or the changelog's when
// empty) and returns the path of the package.
func buildDeb(t *testing.T, root, version string) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(root, "packaging/build-deb"))
	cmd.Env = os.Environ()
	if version != "" {
		cmd.Env = append(cmd.Env, "SLUICE_VERSION="+version)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("packaging/build-deb: %v\n%s", err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return filepath.Join(root, lines[len(lines)-1])
}

// startPackaged runs the installed sluice as the unit does: as user
// sluice with its groups (User=sluice), no new privileges
// (NoNewPrivileges=yes), a umask of 0077 (UMask=0077), the installed
// config. setpriv execs sluice itself, so signals reach it as systemd's
// would.
func startPackaged(t *testing.T) *testenv.Process {
	t.Helper()
	log, err := os.Create(filepath.Join(t.TempDir(), "sluice.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", "umask 0077 && exec setpriv --reuid=sluice --regid=sluice --init-groups --no-new-privs -- /usr/sbin/sluice serve -config "+pkgConf)
	cmd.Stdout, cmd.Stderr = log, log
	p := testenv.StartProcess(t, "sluice", cmd)
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(log.Name())
			t.Logf("packaged sluice's log:\n%s", b)
		}
	})
	if err := testenv.Poll(20*time.Second, func() error { return testenv.UnixListening(pkgSocket) }); err != nil {
		b, _ := os.ReadFile(log.Name())
		t.Fatalf("the packaged sluice does not listen on %s: %v\n%s", pkgSocket, err, b)
	}
	return p
}

func installed() bool {
	out, err := exec.Command("dpkg-query", "-W", "-f=${Status}", "sluice").Output()
	return err == nil && !strings.Contains(string(out), "not-installed")
}

func purge(t *testing.T) {
	t.Helper()
	if out, err := exec.Command("dpkg", "--purge", "sluice").CombinedOutput(); err != nil {
		t.Errorf("dpkg --purge sluice: %v\n%s", err, out)
	}
}

func run(t *testing.T, dir, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	t.Logf("%s %s:\n%s", name, strings.Join(args, " "), out)
	return string(out)
}

func wantOwner(t *testing.T, path, owner, group string, mode fs.FileMode) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Error(err)
		return
	}
	st := fi.Sys().(*syscall.Stat_t)
	u, _ := user.LookupId(strconv.Itoa(int(st.Uid)))
	g, _ := user.LookupGroupId(strconv.Itoa(int(st.Gid)))
	var un, gn string
	if u != nil {
		un = u.Username
	}
	if g != nil {
		gn = g.Name
	}
	if un != owner || gn != group || fi.Mode() != mode {
		t.Errorf("%s is %s:%s %v, want %s:%s %v", path, un, gn, fi.Mode(), owner, group, mode)
	}
}

func exposure(out string) string {
	const marker = "Overall exposure level for sluice.service: "
	i := strings.Index(out, marker)
	if i < 0 {
		return ""
	}
	f := strings.Fields(out[i+len(marker):])
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

// machineState lists what a package can leave behind: every file and
// directory under the places a package, its scripts or systemd's helpers
// write (in /run, those named for sluice: other tests' servers come and
// go there), the users and groups, and dpkg's file-mode overrides. Caches,
// logs and dpkg's own database are left out.
func machineState(t *testing.T) []string {
	t.Helper()
	skip := map[string]bool{"/var/cache": true, "/var/log": true, "/var/tmp": true,
		"/var/lib/dpkg": true, "/var/lib/apt": true, "/var/lib/man-db": true}
	var state []string
	for _, top := range []string{"/etc", "/lib/systemd", "/usr/lib/sysusers.d", "/usr/lib/tmpfiles.d", "/usr/sbin",
		"/usr/share/man", "/usr/share/doc", "/usr/share/bash-completion", "/usr/share/lintian/overrides", "/var", "/run"} {
		filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
			switch {
			case err != nil:
				return nil
			case d.IsDir() && skip[p]:
				return fs.SkipDir
			case strings.HasPrefix(p, "/run/") && !strings.Contains(p, "sluice"):
				return nil
			case d.IsDir():
				state = append(state, "dir "+p)
			default:
				state = append(state, "file "+p)
			}
			return nil
		})
	}
	for _, f := range []string{"/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow", "/var/lib/dpkg/statoverride"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, "sluice") {
				state = append(state, f+": "+l)
			}
		}
	}
	slices.Sort(state)
	return state
}
