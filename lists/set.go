package lists

import (
	"fmt"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"sluice/conf"
)

// Config is the [lists] table: each key names a list, written inline as an
// array of entries or kept in a file as "file:/etc/sluice/jp.cidr".
type Config map[string]any

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// Validate checks names and inline entries; files are read by Build.
func (c Config) Validate() error {
	for _, name := range c.names() {
		v := c[name]
		if !nameRE.MatchString(name) {
			return conf.Errorf(name, "list name must be letters, digits, '-' or '_'")
		}
		entries, path, err := source(v)
		if err != nil {
			return conf.In(err, name)
		}
		if path == "" {
			if _, err := Parse(name, entries, nil); err != nil {
				return conf.In(err, name)
			}
		}
	}
	return nil
}

func source(v any) (entries []string, path string, err error) {
	switch v := v.(type) {
	case string:
		p, ok := strings.CutPrefix(v, "file:")
		if !ok || p == "" {
			return nil, "", fmt.Errorf("a list is an array of entries or \"file:/path\", not %q", v)
		}
		if !filepath.IsAbs(p) {
			// sluice runs from / under systemd: a relative path would name
			// a different file there than where the admin tried it.
			return nil, "", fmt.Errorf("list file %q: the path must be absolute", p)
		}
		return nil, p, nil
	case []any:
		for i, e := range v {
			s, ok := e.(string)
			if !ok {
				return nil, "", conf.Errorf(conf.Index(i), "want a string in quotes (a network, an address, a domain or a /regexp/)")
			}
			entries = append(entries, s)
		}
		return entries, "", nil
	}
	return nil, "", fmt.Errorf("a list is an array of entries or \"file:/path\"")
}

// names are the list names in order, so that the first error reported
// is the same every time.
func (c Config) names() []string {
	names := make([]string, 0, len(c))
	for name := range c {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// Set is the named lists, compiled.
type Set struct{ byName map[string]*List }

// Build compiles every list, reading files. With prev (a reload), a file
// that cannot be read keeps prev's version of that list and its error is
// returned in keptOld; without prev, any error fails the build.
func (c Config) Build(prev *Set) (s *Set, keptOld []error, err error) {
	s = &Set{byName: make(map[string]*List, len(c))}
	for _, name := range c.names() {
		v := c[name]
		entries, path, err := source(v)
		if err != nil {
			return nil, nil, conf.In(err, name)
		}
		var l *List
		if path != "" {
			l, err = Load(name, path)
		} else {
			l, err = Parse(name, entries, func(i int) string { return fmt.Sprintf("entry %d", i+1) })
		}
		if err != nil {
			if old := prev.Get(name); old != nil && path != "" {
				s.byName[name] = old
				keptOld = append(keptOld, fmt.Errorf("%w (keeping the list loaded before)", err))
				continue
			}
			return nil, nil, conf.In(err, name)
		}
		s.byName[name] = l
	}
	return s, keptOld, nil
}

// Get returns the list called name, or nil.
func (s *Set) Get(name string) *List {
	if s == nil {
		return nil
	}
	return s.byName[name]
}

// Names lists the names of the lists in the set.
func (s *Set) Names() []string {
	if s == nil {
		return nil
	}
	names := make([]string, 0, len(s.byName))
	for n := range s.byName {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
