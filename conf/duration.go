package conf

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Duration is a config duration: Go syntax ("1m30s", "250ms") plus "d" for
// days, as admins write windows ("1d").
type Duration time.Duration

// MaxDuration bounds every duration sluice accepts, in the file and from
// the admin socket: ten years is longer than any window, pause or
// exemption means, and leaves room to add it to the time of day, or
// to multiply it a few times into a window, without passing what a
// time.Duration or a time in Unix nanoseconds can hold (the year 2262).
const MaxDuration = 3650 * 24 * time.Hour

// maxDays is MaxDuration in days, as the error says it.
const maxDays = int64(MaxDuration / (24 * time.Hour))

// durationRE is the syntax time.ParseDuration reads.
var durationRE = regexp.MustCompile(`^\+?([0-9]*(\.[0-9]*)?(ns|us|µs|μs|ms|s|m|h))+$`)

// ParseDuration parses Go durations and whole days ("2d"), from 0 to
// MaxDuration.
func ParseDuration(s string) (time.Duration, error) {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.ParseUint(n, 10, 64)
		if errors.Is(err, strconv.ErrRange) {
			return 0, tooLong(s)
		}
		if err != nil {
			return 0, fmt.Errorf("invalid duration %s (examples: 30s, 5m, 1h, 1d)", Quote(s))
		}
		if days > uint64(maxDays) {
			return 0, tooLong(s)
		}
		return time.Duration(days) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		if durationRE.MatchString(s) {
			// well formed: only too long for a time.Duration
			return 0, tooLong(s)
		}
		return 0, fmt.Errorf("invalid duration %s (examples: 30s, 5m, 1h, 1d)", Quote(s))
	}
	if d < 0 {
		return 0, fmt.Errorf("negative duration %s", Quote(s))
	}
	if d > MaxDuration {
		return 0, tooLong(s)
	}
	return d, nil
}

func tooLong(s string) error {
	return fmt.Errorf("duration %s is longer than %dd (10 years), the most sluice takes", Quote(s), maxDays)
}

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }
