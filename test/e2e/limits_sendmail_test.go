package e2e

import (
	"testing"
	"time"

	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

// The bytes per sender case with real Sendmail: the same count as with
// Postfix, to the byte.
func TestLimitsSendmailBytesPerSender(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.StartSluice(t, bytesConfig)
	sm := mta.StartSendmail(t, mta.SendmailOptions{Milter: sl.Listen})
	bytesCase(t, sl, sendmailSession(t, sm), func(n int) []mta.Message { return sm.WaitDelivered(n, time.Minute) })
}
