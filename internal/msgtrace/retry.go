package msgtrace

import "time"

// LinkStarter is the link type from a fire-and-forget task's span to the
// span that started it.
const LinkStarter = "starter"

// Decide is the retry decision every front end shares, for settings that
// are not the Tracer's own (a job kind's attempts and backoff): a failure is
// final when it is permanent or attempt has used up maxAttempts; otherwise
// the next attempt waits delay, drawn from b after failed attempt number
// attempt. A nil err is never final and needs no delay.
func Decide(err error, attempt, maxAttempts int, b Backoff) (final bool, delay time.Duration) {
	if err == nil {
		return false, 0
	}
	if IsPermanent(err) || attempt >= maxAttempts {
		return true, 0
	}
	return false, b.Delay(attempt)
}
