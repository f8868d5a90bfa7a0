/** The intrusive LRU list behind the passthrough's descriptor cache, against a plain model. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { type LruLinks, LruList } from '../src/util/lru-list.js';

interface Item extends LruLinks<Item> {
  id: number;
}

test('LruList: uses, removals and eviction order match a model list', () => {
  const op = fc.oneof(
    fc.record({ kind: fc.constant('use' as const), id: fc.nat(15) }),
    fc.record({ kind: fc.constant('remove' as const), id: fc.nat(15) }),
    fc.record({ kind: fc.constant('evict' as const), n: fc.nat(4) }),
  );
  fc.assert(
    fc.property(fc.array(op, { maxLength: 200 }), (ops) => {
      const items: Item[] = Array.from({ length: 16 }, (_, id) => ({ id }));
      const list = new LruList<Item>();
      let model: number[] = []; // oldest first
      for (const o of ops) {
        if (o.kind === 'use') {
          list.use(items[o.id]!);
          model = [...model.filter((x) => x !== o.id), o.id];
        } else if (o.kind === 'remove') {
          list.remove(items[o.id]!);
          model = model.filter((x) => x !== o.id);
        } else {
          // Evicting while iterating, as the descriptor cache trims.
          let left = o.n;
          for (const it of list.oldestFirst()) {
            if (left-- === 0) break;
            list.remove(it);
          }
          model = model.slice(Math.min(o.n, model.length));
        }
        assert.deepEqual([...list.oldestFirst()].map((x) => x.id), model);
        assert.equal(list.size, model.length);
        for (const it of items) assert.equal(list.has(it), model.includes(it.id));
      }
    }),
  );
});
