package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/tracebridge/tracebridge/journey"
)

// Jaeger's HTTP query API (the one its UI uses) searches one service at a
// time: GET /api/traces?service=S&tags={"session.id":"…"}&start&end&limit
// returns the whole traces with a span of S that has the tag. A session
// crosses services, so every service is searched (GET /api/services lists
// them), and the traces its spans link to are fetched by ID
// (GET /api/traces/{id}), so that links resolve.

// maxLinkedTraces bounds the traces fetched only because a span of the
// session links to them.
const maxLinkedTraces = 100

// maxResponse bounds what is read of one response.
const maxResponse = 256 << 20

type jaegerClient struct {
	base *url.URL
	hc   *http.Client
}

func fetchJaeger(ctx context.Context, o journeyOptions, session string) ([]journey.Span, error) {
	base, err := url.Parse(strings.TrimRight(o.jaeger, "/"))
	if err != nil || base.Scheme == "" || base.Host == "" {
		return nil, fmt.Errorf("--jaeger %q: want a URL such as %s", o.jaeger, defaultJaeger)
	}
	c := &jaegerClient{base: base, hc: &http.Client{}}
	services := []string(o.services)
	if len(services) == 0 {
		if services, err = c.services(ctx); err != nil {
			return nil, err
		}
	}
	tags, err := json.Marshal(map[string]string{journey.SessionKey: session})
	if err != nil {
		return nil, err
	}
	end := time.Now()
	q := url.Values{
		"tags":  {string(tags)},
		"start": {strconv.FormatInt(end.Add(-o.lookback).UnixMicro(), 10)},
		"end":   {strconv.FormatInt(end.UnixMicro(), 10)},
		"limit": {strconv.Itoa(o.limit)},
	}
	var spans []journey.Span
	have := map[trace.TraceID]bool{}
	for _, svc := range services {
		q.Set("service", svc)
		found, err := c.spans(ctx, "/api/traces", q)
		if err != nil {
			return nil, fmt.Errorf("search service %q: %w", svc, err)
		}
		for _, s := range found {
			have[s.TraceID] = true
		}
		spans = append(spans, found...)
	}
	// The traces the session's spans link to, which may carry no session
	// (a producer outside the system) or be gone.
	var linked []trace.TraceID
	for _, s := range spans {
		for _, l := range s.Links {
			if !have[l.TraceID] && len(linked) < maxLinkedTraces {
				have[l.TraceID] = true
				linked = append(linked, l.TraceID)
			}
		}
	}
	for _, id := range linked {
		found, err := c.spans(ctx, "/api/traces/"+id.String(), nil)
		var jerr *journey.JaegerError
		if errors.As(err, &jerr) && jerr.Code == http.StatusNotFound {
			continue // a broken link, which the journey reports
		}
		if err != nil {
			return nil, fmt.Errorf("trace %s: %w", id, err)
		}
		spans = append(spans, found...)
	}
	return spans, nil
}

// get fetches path and returns the body of a 200 answer. Another answer is
// an error with Jaeger's own message when it sent one.
func (c *jaegerClient) get(ctx context.Context, path string, q url.Values) ([]byte, error) {
	u := *c.base
	u.Path += path
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("query Jaeger: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", u.Redacted(), err)
	}
	if resp.StatusCode != http.StatusOK {
		if _, jerr := journey.ReadJaeger(bytes.NewReader(body)); jerr != nil && !errors.Is(jerr, journey.ErrNotJaeger) {
			return nil, jerr
		}
		return nil, fmt.Errorf("GET %s: %s", u.Redacted(), resp.Status)
	}
	return body, nil
}

func (c *jaegerClient) spans(ctx context.Context, path string, q url.Values) ([]journey.Span, error) {
	body, err := c.get(ctx, path, q)
	if err != nil {
		return nil, err
	}
	return journey.ReadJaeger(bytes.NewReader(body))
}

func (c *jaegerClient) services(ctx context.Context) ([]string, error) {
	body, err := c.get(ctx, "/api/services", nil)
	if err != nil {
		return nil, fmt.Errorf("list services: %w", err)
	}
	var resp struct {
		Data []string `json:"data"`
	}
	if err := json.Unmarshal(body, &resp); err != nil {
		return nil, fmt.Errorf("list services: %w: %w", journey.ErrNotJaeger, err)
	}
	if len(resp.Data) == 0 {
		return nil, fmt.Errorf("no service is known yet to Jaeger at %s", c.base.Redacted())
	}
	return resp.Data, nil
}
