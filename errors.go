package tracebridge

import (
	"github.com/tracebridge/tracebridge/internal/msgtrace"
)

// Permanent wraps err so that consumers and the job runner do not retry it:
// the message or job goes straight to its dead-letter destination. Use it
// for input that can never succeed, such as a payload that does not decode.
// Permanent(nil) is nil.
func Permanent(err error) error { return msgtrace.Permanent(err) }

// IsPermanent reports whether err, or any error it wraps, was marked with
// Permanent.
func IsPermanent(err error) bool { return msgtrace.IsPermanent(err) }

// PanicError is the error a handler's panic becomes. The message is never
// lost to a panic: it is retried or dead-lettered like any failure, and the
// stack is recorded on the span.
type PanicError = msgtrace.PanicError
