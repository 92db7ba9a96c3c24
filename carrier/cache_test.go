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
		c.put(fmt.Sprintf("k=%d", i), i)
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
	c.put(long, 1)
	if _, ok := c.get(long); ok {
		t.Fatal("over-long value cached")
	}
	c.put("recent", 7)
	if v, ok := c.get("recent"); !ok || v != 7 {
		t.Fatalf("get after put = %d, %v", v, ok)
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
				if v, ok := c.get(k); ok && v != k {
					t.Errorf("key %q holds %q", k, v)
					return
				}
				c.put(k, k)
			}
		})
	}
	wg.Wait()
}
