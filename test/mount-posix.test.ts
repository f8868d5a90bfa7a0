/** POSIX semantics through the kernel: credentials, permissions, sticky/setgid, locks, xattrs. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { sh, withMount } from './helpers/daemon.js';
import { lockContention } from './helpers/workloads.js';

// Run a command as an unprivileged user with exact credentials.
const as = (uid: number, gid: number, groups = '') => `setpriv --reuid=${uid} --regid=${gid} ${groups ? `--groups=${groups}` : '--clear-groups'} --`;

test('files belong to the caller; permissions and sticky bit are enforced', async () => {
  await withMount(async (dir) => {
    const out = await sh(
      `
      cd "${dir}"
      mkdir pub && chmod 1777 pub
      echo secret > private && chmod 600 private
      ${as(1000, 1000)} sh -c 'echo mine > pub/u1000 && mkdir pub/d1000'
      stat -c '%u:%g %n' pub/u1000 pub/d1000
      ${as(1001, 1001)} cat private 2>/dev/null && echo LEAK || echo denied-read
      ${as(1001, 1001)} rm -f pub/u1000 2>/dev/null && echo LEAK || echo denied-sticky
      ${as(1001, 1001)} chmod 777 pub/u1000 2>/dev/null && echo LEAK || echo denied-chmod
      ${as(1000, 1000)} chown 1001 pub/u1000 2>/dev/null && echo LEAK || echo denied-chown
      ${as(1000, 1000)} rm pub/u1000 && echo owner-removed
      mkdir sg && chown 0:4242 sg && chmod 2777 sg
      ${as(1000, 1000)} sh -c 'touch sg/f && mkdir sg/d'
      stat -c '%g %A' sg/f sg/d
      `,
    );
    assert.deepEqual(out.trim().split('\n'), [
      '1000:1000 pub/u1000',
      '1000:1000 pub/d1000',
      'denied-read',
      'denied-sticky',
      'denied-chmod',
      'denied-chown',
      'owner-removed',
      '4242 -rw-r--r--',
      '4242 drwxr-sr-x',
    ]);
  });
});

test('the backend itself enforces permissions (mounted without default_permissions)', async () => {
  await withMount(
    async (dir) => {
      const out = await sh(
        `
        cd "${dir}"
        echo secret > private && chmod 600 private && mkdir locked && chmod 700 locked && touch locked/x
        ${as(1001, 1001)} cat private 2>/dev/null && echo LEAK || echo denied-read
        ${as(1001, 1001)} ls locked 2>/dev/null && echo LEAK || echo denied-list
        ${as(1001, 1001)} sh -c 'echo x > private' 2>/dev/null && echo LEAK || echo denied-write
        ${as(1001, 1001, '0')} cat private 2>/dev/null && echo LEAK || echo denied-group
        chmod 640 private
        ${as(1001, 1001, '0')} cat private
        `,
      );
      assert.deepEqual(out.trim().split('\n'), ['denied-read', 'denied-list', 'denied-write', 'denied-group', 'secret']);
    },
    ['--no-default-permissions'],
  );
});

test('flock and fcntl locks contend across processes; a blocked waiter can be interrupted', () => withMount(lockContention));

test('extended attributes: set, get, list, remove, create/replace semantics', async () => {
  await withMount(async (dir) => {
    const out = await sh(
      `
      cd "${dir}" && touch f
      setfattr -n user.color -v blue f && setfattr -n user.size -v 42 f
      getfattr --only-values -n user.color f; echo
      getfattr -d --absolute-names f | grep -c user.
      setfattr -x user.color f && (getfattr -n user.color f 2>&1 || true) | grep -c 'No such attribute'
      python3 -c "import os; os.setxattr('f', 'user.size', b'x', os.XATTR_CREATE)" 2>/dev/null && echo LEAK || echo exists
      python3 -c "import os; os.setxattr('f', 'user.nope', b'x', os.XATTR_REPLACE)" 2>/dev/null && echo LEAK || echo absent
      `,
    );
    assert.deepEqual(out.trim().split('\n'), ['blue', '2', '1', 'exists', 'absent']);
  });
});

test('readdir stays consistent while the directory changes (no entry twice, survivors all seen)', async () => {
  await withMount(async (dir) => {
    const out = await sh(
      `
      cd "${dir}" && mkdir d && for i in $(seq 1 3000); do : > d/f$i; done
      python3 - <<'PY'
import os
seen = []
with os.scandir('d') as it:
    for n, e in enumerate(it):
        seen.append(e.name)
        if n == 100:
            for i in range(1, 1500): os.unlink(f'd/f{i*2}')
            for i in range(5): open(f'd/new{i}', 'w').close()
assert len(seen) == len(set(seen)), 'duplicate entries'
odd = {f'f{i}' for i in range(1, 3001, 2)}
missing = odd - set(seen)
print('dups=0 missing=%d total=%d' % (len(missing), len(os.listdir('d'))))
PY
      `,
    );
    assert.equal(out.trim(), 'dups=0 missing=0 total=1506');
  });
});

test('SEEK_DATA/SEEK_HOLE and fallocate punch holes', async () => {
  await withMount(async (dir) => {
    const out = await sh(
      `
      cd "${dir}"
      truncate -s 10M sparse && printf data | dd of=sparse bs=1 seek=$((4*1024*1024)) conv=notrunc status=none
      python3 -c "
import os
fd = os.open('sparse', os.O_RDWR)
print(os.lseek(fd, 0, os.SEEK_DATA), os.lseek(fd, 4*1024*1024, os.SEEK_HOLE))
"
      head -c 1M /dev/urandom > full && fallocate -p -o 0 -l 512K full && stat -c '%s' full
      od -An -tx1 -N4 full | tr -d ' '
      fallocate -l 2M grown && stat -c '%s' grown
      `,
    );
    const [seek, size, zeros, grown] = out.trim().split('\n');
    assert.equal(seek, `${4 * 1024 * 1024} ${4 * 1024 * 1024 + 64 * 1024}`);
    assert.equal(size, String(1024 * 1024));
    assert.equal(zeros, '00000000');
    assert.equal(grown, String(2 * 1024 * 1024));
  });
});
