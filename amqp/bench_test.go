package amqp_test

import (
	"context"
	"errors"
	neturl "net/url"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge"
	"github.com/tracebridge/tracebridge/amqp"
	"github.com/tracebridge/tracebridge/carrier"
	"github.com/tracebridge/tracebridge/internal/benchwrap"
	"github.com/tracebridge/tracebridge/internal/testenv"
)

// Sampled spans go to an SDK with no exporter, so the numbers measure
// tracebridge and the SDK, not an exporter's network.
func benchProviders(b *testing.B) map[string]*sdktrace.TracerProvider {
	b.Helper()
	tps := map[string]*sdktrace.TracerProvider{
		"unsampled": sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample())),
		"sampled":   sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample())),
	}
	b.Cleanup(func() {
		for _, tp := range tps {
			_ = tp.Shutdown(context.Background())
		}
	})
	return tps
}

func reportRate(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// publishModes are BenchmarkPublish's paths: without confirms; with
// confirms, waiting for each message's (PublishWithContext); and with
// confirms awaited in windows of confirmWindow messages
// (PublishWithDeferredConfirm), where the broker round trip no longer
// dominates the CPU time of every message and tracing's share shows.
var publishModes = []struct {
	name     string
	confirms bool
	window   int
}{{"noconfirm", false, 1}, {"confirm", true, 1}, {"confirmwindow", true, confirmWindow}}

const confirmWindow = 100

func BenchmarkPublish(b *testing.B) {
	url := testenv.AMQP(b)
	tps := benchProviders(b)
	ctx := carrier.ContextWithSession(context.Background(), "bench-session")
	msg := amqp091.Publishing{Body: make([]byte, 256), Headers: amqp091.Table{"app": "bench"}}
	for _, m := range publishModes {
		confirms, window := m.confirms, m.window
		b.Run(m.name+"/raw", func(b *testing.B) {
			q := uniqueQueue(b, url, "bench")
			_, ch := dial(b, url)
			declare(b, ch, q, amqp091.Table{"x-max-length": int32(1000)})
			if confirms {
				if err := ch.Confirm(false); err != nil {
					b.Fatal(err)
				}
			}
			pending := make([]*amqp091.DeferredConfirmation, 0, window)
			b.ReportAllocs()
			b.ResetTimer()
			cpu := benchwrap.CPU(b)
			for i := range b.N {
				if !confirms {
					if err := ch.PublishWithContext(ctx, "", q, false, false, msg); err != nil {
						b.Fatal(err)
					}
					continue
				}
				dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", q, false, false, msg)
				if err != nil {
					b.Fatalf("publish: %v", err)
				}
				if pending = append(pending, dc); len(pending) == window || i == b.N-1 {
					for _, dc := range pending {
						if !dc.Wait() {
							b.Fatal("nacked")
						}
					}
					pending = pending[:0]
				}
			}
			cpu(b.N)
			b.StopTimer()
			reportRate(b)
		})
		for _, name := range []string{"unsampled", "sampled"} {
			b.Run(m.name+"/wrapped-"+name, func(b *testing.B) {
				q := uniqueQueue(b, url, "bench")
				_, ch := dial(b, url)
				declare(b, ch, q, amqp091.Table{"x-max-length": int32(1000)})
				opts := []tracebridge.Option{tracebridge.WithTracerProvider(tps[name])}
				if confirms {
					opts = append(opts, tracebridge.WithConfirms())
				}
				p, err := amqp.NewPublisher(ch, opts...)
				if err != nil {
					b.Fatal(err)
				}
				pending := make([]*amqp.Confirmation, 0, window)
				b.ReportAllocs()
				b.ResetTimer()
				cpu := benchwrap.CPU(b)
				for i := range b.N {
					if window == 1 {
						if err := p.PublishWithContext(ctx, "", q, false, false, msg); err != nil {
							b.Fatal(err)
						}
						continue
					}
					c, err := p.PublishWithDeferredConfirm(ctx, "", q, false, false, msg)
					if err != nil {
						b.Fatal(err)
					}
					if pending = append(pending, c); len(pending) == window || i == b.N-1 {
						for _, c := range pending {
							if err := c.Wait(ctx); err != nil {
								b.Fatal(err)
							}
						}
						pending = pending[:0]
					}
				}
				cpu(b.N)
				b.StopTimer()
				reportRate(b)
			})
		}
		for _, h := range benchwrap.Variants() {
			b.Run(m.name+"/"+h.Name, func(b *testing.B) {
				q := uniqueQueue(b, url, "bench")
				_, ch := dial(b, url)
				declare(b, ch, q, amqp091.Table{"x-max-length": int32(1000)})
				if confirms {
					if err := ch.Confirm(false); err != nil {
						b.Fatal(err)
					}
				}
				hw := benchwrap.New(tps[modeName(h.Sampled)], "rabbitmq", h.Full)
				hctx := benchwrap.SessionInBaggage(ctx)
				// The server's address is known once, when the wrapper
				// is made, as tracebridge's Publisher knows it.
				srv := serverAttrs(nil, url)
				extra := func(a []attribute.KeyValue) []attribute.KeyValue {
					a = append(a, srv...)
					a = append(a, semconv.MessagingMessageBodySize(len(msg.Body)), semconv.MessagingRabbitMQDestinationRoutingKey(q))
					if s := carrier.SessionFromContext(ctx); s != "" {
						a = append(a, semconv.SessionID(s))
					}
					return a
				}
				type inFlight struct {
					dc   *amqp091.DeferredConfirmation
					span trace.Span
				}
				pending := make([]inFlight, 0, window)
				b.ReportAllocs()
				b.ResetTimer()
				cpu := benchwrap.CPU(b)
				for i := range b.N {
					// The caller's table is left alone: the journey goes
					// into a copy.
					pub := msg
					pub.Headers = make(amqp091.Table, len(msg.Headers)+3)
					for k, v := range msg.Headers {
						pub.Headers[k] = v
					}
					sctx, span := hw.Send(hctx, q, benchwrap.AMQPCarrier(pub.Headers), extra)
					if !confirms {
						err := ch.PublishWithContext(sctx, "", q, false, false, pub)
						benchwrap.End(span, err)
						if err != nil {
							b.Fatal(err)
						}
						continue
					}
					// The span ends at the broker's answer.
					dc, err := ch.PublishWithDeferredConfirmWithContext(sctx, "", q, false, false, pub)
					if err != nil {
						benchwrap.End(span, err)
						b.Fatal(err)
					}
					if pending = append(pending, inFlight{dc, span}); len(pending) == window || i == b.N-1 {
						for _, f := range pending {
							if !f.dc.Wait() {
								err = errors.New("nacked")
							}
							benchwrap.End(f.span, err)
							if err != nil {
								b.Fatal(err)
							}
						}
						clear(pending)
						pending = pending[:0]
					}
				}
				cpu(b.N)
				b.StopTimer()
				reportRate(b)
			})
		}
	}
}

func modeName(sampled bool) string {
	if sampled {
		return "sampled"
	}
	return "unsampled"
}

// serverAttrs are server.address and server.port of url.
func serverAttrs(dst []attribute.KeyValue, url string) []attribute.KeyValue {
	u, _ := neturl.Parse(url)
	p, _ := strconv.Atoi(u.Port())
	return append(dst, semconv.ServerAddress(u.Hostname()), semconv.ServerPort(p))
}

// fill puts n messages with a creation context on q, outside the timer.
func fill(b *testing.B, url, q string, n int) {
	b.Helper()
	_, ch := dial(b, url)
	declare(b, ch, q, nil)
	p, err := amqp.NewPublisher(ch, tracebridge.WithConfirms(),
		tracebridge.WithTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))))
	if err != nil {
		b.Fatal(err)
	}
	ctx := carrier.ContextWithSession(context.Background(), "bench-session")
	confs := make([]*amqp.Confirmation, 0, n)
	for range n {
		c, err := p.PublishWithDeferredConfirm(ctx, "", q, false, false, amqp091.Publishing{Body: make([]byte, 256)})
		if err != nil {
			b.Fatal(err)
		}
		confs = append(confs, c)
	}
	for _, c := range confs {
		if err := c.Wait(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// ownLoop is a user's own delivery loop over a queue filled with b.N
// messages: prefetch 2, one delivery at a time handed to handle, which
// settles it. The raw, hand-written and Tracer rows differ only in handle.
func ownLoop(b *testing.B, url string, handle func(q string, d amqp091.Delivery) error) {
	q := uniqueQueue(b, url, "benchc")
	fill(b, url, q, b.N)
	_, ch := dial(b, url)
	if err := ch.Qos(2, 0, false); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	cpu := benchwrap.CPU(b)
	ds, err := ch.Consume(q, "", false, false, false, false, nil)
	if err != nil {
		b.Fatal(err)
	}
	for range b.N {
		if err := handle(q, <-ds); err != nil {
			b.Fatal(err)
		}
	}
	cpu(b.N)
	b.StopTimer()
	reportRate(b)
}

func BenchmarkConsume(b *testing.B) {
	url := testenv.AMQP(b)
	tps := benchProviders(b)
	b.Run("raw", func(b *testing.B) {
		ownLoop(b, url, func(_ string, d amqp091.Delivery) error { return d.Ack(false) })
	})
	for _, h := range benchwrap.Variants() {
		b.Run(h.Name, func(b *testing.B) {
			hw := benchwrap.New(tps[modeName(h.Sampled)], "rabbitmq", h.Full)
			var n atomic.Int64
			handler := func(context.Context, amqp091.Delivery) error { n.Add(1); return nil }
			ownLoop(b, url, func(q string, d amqp091.Delivery) error {
				ctx, span := hw.Receive(context.Background(), q, benchwrap.AMQPCarrier(d.Headers), func(a []attribute.KeyValue) []attribute.KeyValue {
					return append(a, semconv.MessagingMessageBodySize(len(d.Body)),
						semconv.MessagingRabbitMQMessageDeliveryTag(int(d.DeliveryTag)),
						semconv.MessagingRabbitMQDestinationRoutingKey(d.RoutingKey), attribute.Int("tracebridge.attempt", 1))
				})
				err := handler(ctx, d)
				if err == nil {
					err = d.Ack(false)
				}
				benchwrap.End(span, err)
				return err
			})
		})
	}
	for _, name := range []string{"unsampled", "sampled"} {
		// The Tracer in a delivery loop of the user's own, the same loop
		// as the hand-written rows': its own path in the README's table.
		b.Run("tracer-"+name, func(b *testing.B) {
			tr := amqp.NewTracer(tracebridge.WithTracerProvider(tps[name]))
			var n atomic.Int64
			handler := func(context.Context, amqp091.Delivery) error { n.Add(1); return nil }
			ownLoop(b, url, func(_ string, raw amqp091.Delivery) error {
				ctx, d := tr.StartProcess(context.Background(), raw)
				err := handler(ctx, d.Delivery)
				if err == nil {
					return d.Ack(false) // settles, then ends the span
				}
				d.Fail(err)
				_ = d.Nack(false, true)
				return err
			})
		})
	}
	for _, name := range []string{"unsampled", "sampled"} {
		b.Run("wrapped-"+name, func(b *testing.B) {
			q := uniqueQueue(b, url, "benchc")
			fill(b, url, q, b.N)
			var n atomic.Int64
			done := make(chan struct{})
			target := int64(b.N)
			c := amqp.NewConsumer(url, q, nil, func(ctx context.Context, d amqp091.Delivery) error {
				if n.Add(1) == target {
					close(done)
				}
				return nil
			}, tracebridge.WithTracerProvider(tps[name]))
			b.ReportAllocs()
			b.ResetTimer()
			cpu := benchwrap.CPU(b)
			stop := runConsumer(b, c.Run)
			select {
			case <-done:
			case <-time.After(5 * time.Minute):
				b.Fatal("consumer too slow")
			}
			cpu(b.N)
			b.StopTimer()
			reportRate(b)
			_ = stop()
		})
	}
}
