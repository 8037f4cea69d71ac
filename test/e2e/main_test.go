// Package e2e holds sluice's end-to-end tests: real Postfix, Sendmail and
// Redis (started by test/mta) with the sluice binary attached.
//
// They run when SLUICE_E2E=1 or CI=true (./test/run sets SLUICE_E2E=1);
// then a missing server fails the test. Otherwise they skip, loudly.
package e2e

import (
	"os"
	"testing"

	"sluice/test/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }
