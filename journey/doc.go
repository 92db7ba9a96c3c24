// Package journey assembles the journey of a session from finished spans:
// every trace that carries the session's session.id, joined through
// parents and through links (retry attempts, link-policy consumers, jobs
// that start a trace of their own, batch sends), and reports what a user
// debugging the session looks for: the systems and services crossed,
// orphans (a parent that never arrived), broken links, retry chains with
// their attempts and outcome, dead letters, spans of one session on a trace
// of another, and the critical path with its durations.
//
// Spans come from the OpenTelemetry SDK (FromSDK, for a span processor or
// exporter, and package journeytest's recorder) or from a trace store: OTLP
// JSON lines as the Collector's file exporter writes them (ReadOTLP; the
// OTLPWriter exporter writes them) and Jaeger's HTTP query API (ReadJaeger).
// All of them map into Span, so a journey is the same whatever its source:
//
//	j := journey.Assemble(session, spans)
//	j.Draw(os.Stdout)     // the waterfall, trace by trace, links by number
//	j.Describe(os.Stdout) // retry chains, dead letters, critical path, defects
//
// `tracebridge journey <session-id>` (cmd/tracebridge) prints exactly that.
package journey
