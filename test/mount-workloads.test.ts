/** The memory backend on a real FUSE mount, driven by real programs in separate processes. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { sh, withMount } from './helpers/daemon.js';
import { workloads } from './helpers/workloads.js';

for (const [name, run] of Object.entries(workloads)) {
  test(`memory: ${name}`, () => withMount(run));
}

test('the reader-thread I/O mode serves the same workload', async () => {
  await withMount(
    async (dir) => {
      const out = await sh(
        `
        cd "${dir}" && seq 1 100000 > n && mkdir d && cp n d/m && sha256sum n d/m | awk '{print $1}' | uniq | wc -l
        fio --verify_state_save=0 --name=t --directory="${dir}" --rw=randrw --bs=4k --size=8m --numjobs=2 --ioengine=psync --verify=crc32c --output-format=terse --minimal >/dev/null && echo verified
        `,
      );
      assert.deepEqual(out.trim().split('\n'), ['1', 'verified']);
    },
    ['--io', 'threads', '--readers', '3'],
  );
});
