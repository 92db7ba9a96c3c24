// Package kafkaconn builds the kafka-go Transport of a writer that must
// reach the cluster the way a reader does: a Consumer's retry and
// dead-letter writer, a job queue's writers. A kafkago.Reader connects
// through a kafkago.Dialer and a kafkago.Writer through a
// kafkago.Transport; the two carry the same settings (TLS, SASL, client
// ID, dial function) under different names, and a writer that gets none
// of them cannot write to a secured cluster at all.
package kafkaconn

import (
	"context"
	"fmt"
	"net"

	kafkago "github.com/segmentio/kafka-go"
)

// Transport returns a new Transport (its own: close it with
// CloseIdleConnections when its writers are closed) that connects as d
// does: d's TLS config, SASL mechanism, client ID, DialFunc (or a
// net.Dialer with d's local address, fallback delay and keep alive),
// Resolver, Timeout (as the dial timeout, which covers the TLS and
// SASL handshakes too) and Deadline. d's TransactionalID concerns a
// producer's transactions, not its connections, and is not carried over.
// A nil d gives a Transport with kafka-go's defaults, as a Reader without a
// Dialer gets kafkago.DefaultDialer.
func Transport(d *kafkago.Dialer) *kafkago.Transport {
	if d == nil {
		d = kafkago.DefaultDialer
	}
	dial := d.DialFunc
	if dial == nil {
		// DualStack is left out: net.Dialer always does it now.
		dial = (&net.Dialer{LocalAddr: d.LocalAddr, FallbackDelay: d.FallbackDelay, KeepAlive: d.KeepAlive}).DialContext
	}
	resolver, deadline := d.Resolver, d.Deadline
	return &kafkago.Transport{
		ClientID:    d.ClientID,
		TLS:         d.TLS,
		SASL:        d.SASLMechanism,
		DialTimeout: d.Timeout, // zero: the Transport's default
		Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
			if !deadline.IsZero() {
				var cancel context.CancelFunc
				ctx, cancel = context.WithDeadline(ctx, deadline)
				defer cancel()
			}
			if resolver != nil {
				var err error
				if address, err = resolve(ctx, resolver, address); err != nil {
					return nil, err
				}
			}
			return dial(ctx, network, address)
		},
	}
}

// resolve maps address through r as kafkago.Dialer does: the first host r
// returns replaces the host, and its port is used only when address has
// none.
func resolve(ctx context.Context, r kafkago.Resolver, address string) (string, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		host, port = address, ""
	}
	hosts, err := r.LookupHost(ctx, host)
	if err != nil {
		return "", fmt.Errorf("resolve broker host %q: %w", host, err)
	}
	if len(hosts) > 0 {
		h, p, err := net.SplitHostPort(hosts[0])
		if err != nil {
			h, p = hosts[0], ""
		}
		host = h
		if port == "" {
			port = p
		}
	}
	return net.JoinHostPort(host, port), nil
}
