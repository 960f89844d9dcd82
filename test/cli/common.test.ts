// readAll (src/cli/common.ts): what crypt-client reads from stdin is bounded.
import t from 'tap';
import { Readable } from 'node:stream';
import { readAll } from '../../src/cli/common.js';

t.test('readAll reads a stream whole, and stops past its bound', async (t) => {
  const parts = () => Readable.from([Buffer.from('abc'), 'def', Buffer.from('gh')]);
  t.same(await readAll(parts()), Buffer.from('abcdefgh'), 'every chunk, bytes and strings');
  t.same(await readAll(parts(), 8), Buffer.from('abcdefgh'), 'exactly at the bound: all of it');
  const over = parts();
  t.equal(await readAll(over, 5), null, 'past the bound: null');
  t.ok(over.destroyed, 'and the stream is not read further');
});
