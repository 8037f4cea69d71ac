package limits

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"sluice/conf"
)

// window is one "N per period" of a rule.
type window struct {
	text     string // as written: "120/1m"
	n        int64
	period   time.Duration
	interval int64 // nanoseconds per unit
	burst    int64
}

// parseRate parses "N/period": "120/1m", "500/1d", "30/m"; with bytes,
// N may carry a unit: "50MB/1h", "1GiB/1d".
func parseRate(s string, bytes bool) (window, error) {
	num, per, ok := strings.Cut(s, "/")
	if !ok {
		return window{}, fmt.Errorf("rate %q: want N/period, e.g. 120/1m", s)
	}
	n, err := parseCount(strings.TrimSpace(num), bytes)
	if err != nil {
		return window{}, fmt.Errorf("rate %q: %w", s, err)
	}
	per = strings.TrimSpace(per)
	if per != "" && (per[0] < '0' || per[0] > '9') {
		per = "1" + per
	}
	d, err := conf.ParseDuration(per)
	if err != nil {
		return window{}, fmt.Errorf("rate %q: period: %w", s, err)
	}
	if d < time.Second {
		return window{}, fmt.Errorf("rate %q: period must be at least 1s", s)
	}
	w := window{text: s, n: n, period: d, interval: int64(d) / n, burst: n}
	if w.interval < 1 {
		return window{}, fmt.Errorf("rate %q is finer than one unit per nanosecond", s)
	}
	return w, nil
}

var byteUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
	{"KB", 1000}, {"MB", 1000 * 1000}, {"GB", 1000 * 1000 * 1000},
	{"K", 1000}, {"M", 1000 * 1000}, {"G", 1000 * 1000 * 1000}, {"B", 1},
}

func parseCount(s string, bytes bool) (int64, error) {
	mult := int64(1)
	if bytes {
		for _, u := range byteUnits {
			if v, ok := strings.CutSuffix(s, u.suffix); ok {
				s, mult = strings.TrimSpace(v), u.mult
				break
			}
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		if bytes {
			return 0, fmt.Errorf("count %q must be a positive number, optionally with KB, MB, GB, KiB, MiB or GiB", s)
		}
		return 0, fmt.Errorf("count %q must be a positive whole number", s)
	}
	if n > (1<<62)/mult {
		return 0, fmt.Errorf("count %q is too large", s)
	}
	return n * mult, nil
}

// String renders the window for headers and logs.
func (w window) String() string { return w.text }
