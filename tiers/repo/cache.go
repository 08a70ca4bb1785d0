package repo

// cached is a verified module held in memory.
type cached struct {
	hash string  // the hash it was verified against
	key  statKey // the file it was read from
	mod  []byte  // never changed once cached
	used uint64  // the tick of the latest use
}

// cache holds the verified modules of recently used apps within a budget
// of bytes, dropping the least recently used first. Its user serializes
// calls (Repo.mu).
type cache struct {
	budget, total int64
	m             map[string]*cached
}

func (c *cache) init(budget int64) {
	c.budget = budget
	c.m = map[string]*cached{}
}

// get returns the module cached for id, marking it used at tick, or nil.
func (c *cache) get(id string, tick uint64) *cached {
	e := c.m[id]
	if e != nil {
		e.used = tick
	}
	return e
}

// put caches e for id, dropping older modules to make room, and reports
// whether it did: a module larger than the budget is not cached.
func (c *cache) put(id string, e *cached) bool {
	size := int64(len(e.mod))
	if size > c.budget {
		return false
	}
	c.drop(id)
	for c.total+size > c.budget {
		var (
			oldest string
			least  uint64
		)
		for k, v := range c.m {
			if oldest == "" || v.used < least {
				oldest, least = k, v.used
			}
		}
		c.drop(oldest)
	}
	c.m[id] = e
	c.total += size
	return true
}

func (c *cache) drop(id string) {
	if e, ok := c.m[id]; ok {
		c.total -= int64(len(e.mod))
		delete(c.m, id)
	}
}

func (c *cache) clear() {
	c.m = map[string]*cached{}
	c.total = 0
}
