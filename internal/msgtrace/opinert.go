package msgtrace

// Inert reports whether End would do nothing: the operation started no
// span (the unsampled path, see passThrough) and no metric measures it. A
// front end that keeps state only to end an operation later, such as the
// record of an async publish awaiting its ack, need keep none for it.
func (o Op) Inert() bool {
	return o.Span == nil || o.parentOnly && o.start.IsZero()
}
