package carrier

import (
	"fmt"
	"strings"
	"sync"
	"testing"
)

// TestParseCacheBounded: however many distinct values pass through, the
// cache holds at most cacheShards*cachePerShard entries, and values longer
// than maxCachedLen are never stored.
func TestParseCacheBounded(t *testing.T) {
	c := newParseCache[int]()
	for i := range 10000 {
		k := fmt.Sprintf("k=%d", i)
		c.put(k, c.hash(k), i)
		c.put(k, c.hash(k), i) // the second sighting is admitted
	}
	n := 0
	for i := range c.shards {
		if l := len(c.shards[i].m); l > cachePerShard {
			t.Fatalf("shard %d holds %d entries", i, l)
		}
		n += len(c.shards[i].m)
	}
	if n > cacheShards*cachePerShard || n < cacheShards*cachePerShard/2 {
		t.Fatalf("cache holds %d entries", n)
	}
	long := strings.Repeat("x", maxCachedLen+1)
	c.put(long, c.hash(long), 1)
	c.put(long, c.hash(long), 1)
	if _, ok := c.get(long, c.hash(long)); ok {
		t.Fatal("over-long value cached")
	}
	h := c.hash("recent")
	c.put("recent", h, 7)
	if _, ok := c.get("recent", h); ok {
		t.Fatal("a value seen once was stored")
	}
	c.put("recent", h, 7)
	if v, ok := c.get("recent", h); !ok || v != 7 {
		t.Fatalf("get after the second put = %d, %v", v, ok)
	}
}

// TestParseCacheConcurrent exercises the shard locks under -race.
func TestParseCacheConcurrent(t *testing.T) {
	c := newParseCache[string]()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				k := fmt.Sprintf("%d", (g*7+i)%600)
				h := c.hash(k)
				if v, ok := c.get(k, h); ok && v != k {
					t.Errorf("key %q holds %q", k, v)
					return
				}
				c.put(k, h, k)
			}
		})
	}
	wg.Wait()
}
