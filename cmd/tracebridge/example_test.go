package main

import (
	"context"
	"os"
)

// The journey of the demo's session, from the spans and log lines the demo
// wrote with --otlp-out and --logs-out (testdata/demo-*.jsonl come from a
// run of `go run ./examples/journey`). The README shows this output.
func Example_journey() {
	run(context.Background(), []string{"journey", "01a23223-9a02-7f05-a1d2-bc7b56140c3e.3wP7qOfZ0MFpjwETss6Vkg",
		"--otlp", "testdata/demo-spans.jsonl", "--logs", "testdata/demo-logs.jsonl"}, os.Stdout, os.Stderr)
	// Output:
	// session 01a23223-9a02-7f05-a1d2-bc7b56140c3e.3wP7qOfZ0MFpjwETss6Vkg   11 spans on 1 trace, from testdata/demo-spans.jsonl
	//
	// #   span                                                           service   system           try  duration  timeline
	// 1   POST (server)                                                  web       http                     7.8ms  |██████████                    |
	// 2   └─ send checkout.orders (producer)                             web       kafka                   5.63ms  |███████                       |
	// 3      └─ process checkout.orders (consumer)                       orders    kafka            1      6.02ms  |         ███████              |
	// 4         └─ send checkout.payments (producer)                     orders    rabbitmq                5.46ms  |         ███████              |
	// 5            ├─ process checkout.payments (consumer)               payments  rabbitmq         1       4.7ms  |                 ██████       | ✗ *errors.errorString (retried)
	// 6            │  └─ send checkout.payments.retry (producer)         payments  rabbitmq                3.98ms  |                  █████       |
	//              │        ↪ link (creation) to #4
	// 7            └─ process checkout.payments (consumer)               payments  rabbitmq         2       1.5ms  |                           █  |
	//                    ↪ link (previous_attempt) to #5
	// 8               └─ send checkout.shipping (producer)               payments  nats                    1.02ms  |                           █  |
	// 9                  └─ process checkout.shipping (consumer)         shipping  nats             1       560µs  |                            █ |
	// 10                    └─ send jobs (producer)                      shipping  tracebridge.jobs         140µs  |                            █ |
	// 11                       └─ process jobs (consumer)                shipping  tracebridge.jobs 1        40µs  |                             █|
	//
	// Crosses http → kafka → rabbitmq → nats → tracebridge.jobs (services web, orders, payments, shipping) in 22.95ms
	//
	// Retry chains:
	//   process checkout.payments: 2 attempts, each attempt linked to the one before, succeeded
	//     attempt 1  #5       4.7ms  ✗ *errors.errorString (retried)
	//     attempt 2  #7       1.5ms  ok
	// Dead letters: none
	//
	// Critical path (22.95ms):
	//   #1   POST                                     web       +0s            7.8ms
	//   #2   send checkout.orders                     web       +140µs        5.63ms
	//   #3   process checkout.orders                  orders    +7.11ms       6.02ms  waited 1.34ms
	//   #4   send checkout.payments                   orders    +7.19ms       5.46ms
	//   #7   process checkout.payments                payments  +20.91ms       1.5ms  waited 8.26ms
	//   #8   send checkout.shipping                   payments  +20.96ms      1.02ms
	//   #9   process checkout.shipping                shipping  +22.06ms       560µs  waited 70µs
	//   #10  send jobs                                shipping  +22.1ms        140µs
	//   #11  process jobs                             shipping  +22.91ms        40µs  waited 670µs
	//
	// Whole: no orphans, no broken links, no cross-talk; 11 spans on 1 trace.
	//
	// Log lines of session 01a23223-9a02-7f05-a1d2-bc7b56140c3e.3wP7qOfZ0MFpjwETss6Vkg, in time order (testdata/demo-logs.jsonl):
	//   15:05:23.774121 INFO  #1   checkout accepted                        baggage.tenant=acme order=order-ETss6Vkg service=web
	//   15:05:23.781192 INFO  #3   order reserved                           baggage.tenant=acme order=order-ETss6Vkg service=orders
	//   15:05:23.787830 WARN  #5   card processor timed out; will retry     baggage.tenant=acme order=order-ETss6Vkg service=payments
	//   15:05:23.794977 INFO  #7   payment captured                         baggage.tenant=acme order=order-ETss6Vkg service=payments
	//   15:05:23.796119 INFO  #9   shipment requested                       baggage.tenant=acme order=order-ETss6Vkg service=shipping
	//   15:05:23.796977 INFO  #11  label printed                            baggage.tenant=acme job=print-label order=order-ETss6Vkg service=shipping
}
