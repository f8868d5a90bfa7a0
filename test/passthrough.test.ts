/** The passthrough backend: real programs on a mount, host-side checks, credentials, confinement. */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { chmodSync, closeSync, constants, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, readdirSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync, lstatSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { Errno } from '../src/fuse/errno.js';
import { Opcode } from '../src/fuse/opcodes.js';
import { AT_EMPTY_PATH, sys, sysNowStats } from '../src/native/syscalls.js';
import { sh, withMount, withPassthrough } from './helpers/daemon.js';
import { withPassthroughPeer } from './helpers/passthrough-peer.js';
import { type OutMsg, parseOut } from './helpers/session-peer.js';
import { encodeRequest } from '../src/fuse/request-codec.js';
import { RequestSpecs } from '../src/fuse/request-specs.js';
import { workloads } from './helpers/workloads.js';

const execFileP = promisify(execFile);
const as = (uid: number, gid: number) => `setpriv --reuid=${uid} --regid=${gid} --clear-groups --`;

/**
 * Sources on a disk file system and on tmpfs, which is held in memory: there the backend
 * makes its metadata calls on the event loop instead of the pool, a path of its own.
 */
const SOURCES: [string, string][] = [['', tmpdir()], [' (tmpfs source)', '/dev/shm']];
function bothSources(name: string, body: (srcParent: string) => Promise<void>): void {
  for (const [suffix, parent] of SOURCES) test(`passthrough${suffix}: ${name}`, () => body(parent));
}

for (const [name, run] of Object.entries(workloads)) {
  bothSources(name, (parent) => withPassthrough((dir) => run(dir), [], parent));
}

// File data through the daemon rather than the kernel: reads and writes at once on the event
// loop (tmpfs; writes on a disk file system), page-cache reads and io_uring, under real programs.
for (const name of ['fio with --verify: random and sequential writes read back intact', 'sqlite3: transactions, rollback journal and WAL, integrity_check']) {
  bothSources(`${name} (file data served by the daemon)`, (parent) => withPassthrough((dir) => workloads[name]!(dir), ['--no-kernel-passthrough'], parent));
}

test('passthrough: what the tenant writes is on the host, and the other way round', async () => {
  await withPassthrough(async (dir, src) => {
    await sh(`mkdir -p "${dir}/t/u" && head -c 300000 /dev/urandom > "${dir}/t/u/r" && ln -s u/r "${dir}/t/s" && mkfifo "${dir}/t/p"`);
    const viaMount = (await sh(`sha256sum < "${dir}/t/u/r"`)).split(' ')[0];
    const onHost = (await sh(`sha256sum < "${src}/t/u/r"`)).split(' ')[0];
    assert.equal(onHost, viaMount);
    assert.equal(readlinkSync(join(src, 't/s')), 'u/r');
    assert.ok(lstatSync(join(src, 't/p')).isFIFO());
    writeFileSync(join(src, 'from-host'), 'host data');
    assert.equal((await sh(`cat "${dir}/from-host"`)).trim(), 'host data');
  });
});

bothSources('a host file system mounted inside the export is served too (another device)', async (parent) => {
  await withPassthrough(async (dir, src) => {
    mkdirSync(join(src, 'sub'));
    writeFileSync(join(src, 'top'), 'on the export');
    await sh(`mount -t tmpfs -o size=16m dpfs-test-sub "${src}/sub"`);
    try {
      writeFileSync(join(src, 'sub/x'), 'on the submount');
      // Looked up (and cached) on the host first, then through the mount: the cached-lookup
      // path must refuse to cross to the other device and leave it to the pool.
      statSync(join(src, 'sub/x'));
      assert.equal((await sh(`cat "${dir}/sub/x"`)).trim(), 'on the submount');
      await sh(`echo written > "${dir}/sub/y" && mkdir "${dir}/sub/d" && touch "${dir}/sub/d/z"`);
      assert.equal(readFileSync(join(src, 'sub/y'), 'utf8').trim(), 'written');
      assert.ok(statSync(join(src, 'sub/d/z')).isFile());
      // Across devices, the host's rules hold.
      await assert.rejects(sh(`ln "${dir}/top" "${dir}/sub/top-link"`), /Invalid cross-device link/);
      assert.equal((await sh(`mv "${dir}/sub/y" "${dir}/y" && cat "${dir}/y"`)).trim(), 'written'); // mv copies
      assert.deepEqual(readdirSync(join(src, 'sub')).sort(), ['d', 'x']);
    } finally {
      await sh(`umount -l "${src}/sub"`);
    }
  }, [], parent);
});

test('passthrough: lookups on the event loop answer from the dentry cache only, on the parent\'s device only', async () => {
  const src = mkdtempSync(join(tmpdir(), 'dpfs-src-'));
  mkdirSync(join(src, 'sub'));
  writeFileSync(join(src, 'f'), 'x');
  await sh(`mount -t tmpfs -o size=1m dpfs-test-sub "${src}/sub"`);
  const fd = openSync(src, 'r');
  try {
    statSync(join(src, 'f'));
    statSync(join(src, 'sub')); // both cached now
    const st = await sys.statx(null, fd, '', AT_EMPTY_PATH);
    const same = sys.lookupNow(null, fd, 'f', st.devMajor, st.devMinor, true);
    assert.ok(same, 'a cached entry on the same device is served');
    closeSync(same.fd);
    assert.equal(sys.lookupNow(null, fd, 'sub', st.devMajor, st.devMinor, true), null, 'a mount point leads to another device: left to the pool');
    assert.equal(sys.lookupNow(null, fd, 'never-looked-up', st.devMajor, st.devMinor, true), null, 'an uncached name: left to the pool');
  } finally {
    closeSync(fd);
    await sh(`umount -l "${src}/sub"`);
    rmSync(src, { recursive: true, force: true });
  }
});

/** Takes a read lease on argv[1], says so, and keeps it 1.5 s (ignoring the break signal). */
const LEASE_HOLDER = `
import fcntl, os, signal, sys, time
signal.signal(signal.SIGIO, signal.SIG_IGN)
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
print('leased', flush=True)
time.sleep(1.5)
`;

for (const parent of ['/var/tmp', '/dev/shm']) {
  test(`passthrough over ${parent}: LOOKUP, GETATTR, READ and WRITE of cached files are answered at once, before the session returns`, async () => {
    const src = mkdtempSync(join(parent, 'dpfs-src-'));
    writeFileSync(join(src, 'f'), 'hello');
    statSync(join(src, 'f')); // in the dentry cache, as a file in use is
    try {
      await withPassthroughPeer(src, async (p) => {
        const ino = Number((await p.call(Opcode.FUSE_LOOKUP, 1, { name: 'f' })).body.readBigUInt64LE(0));
        const fh = Number((await p.call(Opcode.FUSE_OPEN, ino, { flags: 2 })).body.readBigUInt64LE(0));
        const atOnce = (op: number, nodeid: number, args: Record<string, unknown>) => {
          const replies: OutMsg[] = [];
          const free = p.session.handle(encodeRequest({ opcode: op, unique: 900n, nodeid }, RequestSpecs[op as keyof typeof RequestSpecs] as never, args), (chunks) => replies.push(parseOut(chunks)));
          assert.equal(replies.length, 1, `${Opcode[op]} answered within handle()`);
          assert.equal(free, true, `${Opcode[op]}: nothing holds the request`);
          return replies[0]!;
        };
        assert.equal(atOnce(Opcode.FUSE_LOOKUP, 1, { name: 'f' }).error, 0);
        assert.equal(atOnce(Opcode.FUSE_GETATTR, ino, {}).error, 0);
        assert.equal(atOnce(Opcode.FUSE_WRITE, ino, { fh, offset: 5, size: 6, write_flags: 0, lock_owner: 0n, flags: 0, padding: 0, data: Buffer.from(', host') }).error, 0);
        const r = atOnce(Opcode.FUSE_READ, ino, { fh, offset: 0, size: 64, read_flags: 0, lock_owner: 0n, flags: 0, padding: 0 });
        assert.equal(Buffer.from(r.body).toString(), 'hello, host');
        // A name not there, once the host's dentry cache knows it is not (the first lookup
        // of it may read the directory from the device): a negative entry, at once too.
        await p.call(Opcode.FUSE_LOOKUP, 1, { name: 'nothing' });
        assert.equal(atOnce(Opcode.FUSE_LOOKUP, 1, { name: 'nothing' }).error, 0);
      });
    } finally {
      rmSync(src, { recursive: true, force: true });
    }
  });
}

test('passthrough: on tmpfs, opens and creates run on the event loop; across a mount or with a lease they take the pool', async () => {
  const src = mkdtempSync(join('/dev/shm', 'dpfs-src-'));
  mkdirSync(join(src, 'sub'));
  writeFileSync(join(src, 'f'), 'x');
  await sh(`mount -t tmpfs -o size=1m dpfs-test-sub "${src}/sub"`);
  try {
    await withPassthroughPeer(src, async (p) => {
      const before = sysNowStats.poolFallbacks;
      const f = await p.call(Opcode.FUSE_LOOKUP, 1, { name: 'f' });
      const ino = Number(f.body.readBigUInt64LE(0));
      const o = await p.call(Opcode.FUSE_OPEN, ino, { flags: 0 });
      assert.equal(o.error, 0);
      const d = await p.call(Opcode.FUSE_OPENDIR, 1, { flags: 0 });
      assert.equal(d.error, 0);
      const c = await p.call(Opcode.FUSE_CREATE, 1, { flags: 0o101, mode: 0o100644, umask: 0, name: 'g' });
      assert.equal(c.error, 0);
      assert.equal(sysNowStats.poolFallbacks, before, 'open, opendir and create were served on the event loop');
      // A name that is a mount point is another file system: that create is left to the pool.
      const sub = await p.call(Opcode.FUSE_CREATE, 1, { flags: 0o101, mode: 0o100644, umask: 0, name: 'sub' });
      assert.equal(sub.error, -Errno.EISDIR);
      assert.equal(sysNowStats.poolFallbacks, before + 1);
      // A host process holds a lease on f: opening it for writing must wait for the lease to be
      // broken, on the pool, while the event loop goes on serving.
      const holder = spawn('python3', ['-c', LEASE_HOLDER, join(src, 'f')], { stdio: ['ignore', 'pipe', 'inherit'] });
      try {
        await new Promise<void>((resolve, reject) => {
          holder.stdout.once('data', () => resolve());
          holder.once('exit', (code) => reject(new Error(`lease holder exited (${code})`)));
        });
        const order: string[] = [];
        const open = p.call(Opcode.FUSE_OPEN, ino, { flags: 1 }).then((r) => (order.push('open'), r));
        const attr = p.call(Opcode.FUSE_GETATTR, 1, { getattr_flags: 0, dummy: 0, fh: 0 }).then((r) => (order.push('getattr'), r));
        assert.equal((await attr).error, 0);
        assert.equal((await open).error, 0);
        assert.deepEqual(order, ['getattr', 'open'], 'the event loop served on while the open waited');
        assert.equal(sysNowStats.poolFallbacks, before + 2);
      } finally {
        holder.kill('SIGKILL');
      }
    });
  } finally {
    await sh(`umount -l "${src}/sub"`);
    rmSync(src, { recursive: true, force: true });
  }
});

bothSources('each request runs as its caller (ownership, EACCES, setgid, sticky)', async (parent) => {
  await withPassthrough(async (dir, src) => {
    await sh(`chmod 1777 "${src}" && mkdir "${src}/sg" && chown 0:4242 "${src}/sg" && chmod 2777 "${src}/sg" && echo secret > "${src}/private" && chmod 600 "${src}/private"`);
    const out = await sh(
      `
      cd "${dir}"
      ${as(1000, 1000)} sh -c 'echo mine > u1000 && mkdir d1000 && touch sg/f'
      ${as(1001, 1001)} cat private 2>/dev/null && echo LEAK || echo denied-read
      ${as(1001, 1001)} rm -f u1000 2>/dev/null && echo LEAK || echo denied-sticky
      ${as(1001, 1001)} chown 1001 u1000 2>/dev/null && echo LEAK || echo denied-chown
      `,
    );
    assert.deepEqual(out.trim().split('\n'), ['denied-read', 'denied-sticky', 'denied-chown']);
    // Checked on the host: the files belong to the callers, as if they had made them there.
    assert.equal(statSync(join(src, 'u1000')).uid, 1000);
    assert.equal(statSync(join(src, 'd1000')).gid, 1000);
    assert.equal(statSync(join(src, 'sg/f')).gid, 4242);
  }, [], parent);
});

bothSources('xattrs and POSIX ACLs reach the host and are enforced', async (parent) => {
  await withPassthrough(async (dir, src) => {
    const out = await sh(
      `
      chmod 755 "${src}" && cd "${dir}" && echo data > f && chmod 600 f
      setfattr -n user.k -v v1 f && getfattr --absolute-names --only-values -n user.k "${src}/f"; echo
      setfacl -m u:1000:r f
      getfacl -cn "${src}/f" 2>/dev/null | grep '^user:1000'
      ${as(1000, 1000)} cat f
      ${as(1001, 1001)} cat f 2>/dev/null && echo LEAK || echo denied
      `,
    );
    assert.deepEqual(out.trim().split('\n'), ['v1', 'user:1000:r--', 'data', 'denied']);
  }, [], parent);
});

bothSources('cp -a and rsync -a round trips keep data and metadata', async (parent) => {
  await withPassthrough(async (dir) => {
    const out = await sh(
      `
      a=$(mktemp -d); b=$(mktemp -d); trap 'rm -rf "$a" "$b"' EXIT
      mkdir -p "$a/x/y"; for i in $(seq 1 40); do head -c $((i * 513)) /dev/urandom > "$a/x/y/f$i"; done
      chown 1000:1000 "$a/x/y/f1"; chmod 4750 "$a/x/y/f2"; touch -d '1999-12-31 23:59:59.5' "$a/x/y/f3"
      ln -s y/f5 "$a/x/sym"; setfattr -n user.tag -v t "$a/x/y/f6"; setfacl -m u:1000:rw "$a/x/y/f7"
      ln "$a/x/y/f4" "$a/x/y/hard"
      cp -a "$a/x" "${dir}/cp"
      rsync -aHAX "$a/x/" "${dir}/rs/"
      rsync -aHAX "${dir}/rs/" "$b/"
      # Directory sizes are the file system's own business (ext4 4096, tmpfs per entry).
      snap() { (cd "$1" && find . -printf '%p %m %U %G %T@ %l %n\\n' | sort && find . ! -type d -printf '%p %s\\n' | sort && find . -type f -exec sha256sum {} + | sort -k2 && getfattr -R -d -m - . 2>/dev/null | sort); }
      # rsync (3.x; here even between two ext4 directories) does not restore directory and
      # symlink times, so its round trip compares the times of regular files only.
      rsnap() { (cd "$1" && find . -printf '%p %m %U %G %s %l %n\\n' | sort && find . -type f -printf '%p %T@\\n' | sort && find . -type f -exec sha256sum {} + | sort -k2 && getfattr -R -d -m - . 2>/dev/null | sort); }
      diff <(snap "$a/x") <(snap "${dir}/cp") && echo cp-same
      diff <(rsnap "$a/x") <(rsnap "$b") && echo rsync-same
      `,
      { timeout: 180000 },
    );
    assert.deepEqual(out.trim().split('\n'), ['cp-same', 'rsync-same']);
  }, [], parent);
});

test('passthrough: locks contend across processes', async () => {
  await withPassthrough(async (dir) => {
    const out = await sh(
      `
      cd "${dir}" && touch lk
      flock lk -c 'sleep 1' & sleep 0.3
      flock -n lk true && echo LEAK || echo busy
      wait; flock -n lk true && echo free
      `,
    );
    assert.deepEqual(out.trim().split('\n'), ['busy', 'free']);
  });
});

test('passthrough: a default ACL takes the place of the caller\'s umask, as on the host; elsewhere the umask applies', async () => {
  // Files, directories, FIFOs and O_TMPFILE files, made by root and by uid 1000 under umask
  // 027, in a directory with a default ACL and in one without: the modes and ACLs they get
  // on the mount must be the ones the same calls get on a host directory.
  const script = (dir: string) => `
    cd "${dir}"
    mkdir acl plain && chmod 777 acl plain && setfacl -d -m u::rwx,u:1000:rwx,g::rx,m::rwx,o::rx acl
    make() {
      umask 027
      touch "$1/f$2"; mkdir "$1/d$2"; mkfifo "$1/p$2"
      /usr/bin/python3 -c 'import os, sys; print(sys.argv[1], "tmpfile", oct(os.fstat(os.open(sys.argv[1], os.O_TMPFILE | os.O_WRONLY, 0o666)).st_mode))' "$1"
    }
    for d in acl plain; do make $d 0; ${as(1000, 1000)} bash -c "$(declare -f make); make $d 1"; done
    for f in acl/* plain/*; do echo "$f $(stat -c %A "$f") $(getfacl -cp "$f" 2>/dev/null | tr '\\n' ' ')"; done
  `;
  const host = mkdtempSync(join(tmpdir(), 'dpfs-host-'));
  try {
    chmodSync(host, 0o755);
    const expected = await sh(script(host));
    assert.match(expected, /acl\/f1 -rw-rw-r--/, 'the host keeps the default ACL\'s mask');
    assert.match(expected, /plain\/f1 -rw-r-----/, 'the host applies the umask');
    assert.equal(expected.match(/tmpfile/g)?.length, 4, expected);
    await withPassthrough(async (dir, src) => {
      chmodSync(src, 0o755);
      assert.equal(await sh(script(dir)), expected);
    });
  } finally {
    rmSync(host, { recursive: true, force: true });
  }
});

test('passthrough over a path-based FUSE file system (bindfs): hard links outlive whichever name goes first; git works', async () => {
  // bindfs gives each name of a hard-linked file a kernel inode of its own, which stops
  // working when its name goes: git's objects (written, linked, the first name unlinked)
  // and the other order too must still be readable under the name that stays, also where
  // the name went on the host, out of the daemon's sight.
  const lower = mkdtempSync(join(tmpdir(), 'dpfs-bindfs-src-'));
  const upper = mkdtempSync(join(tmpdir(), 'dpfs-bindfs-'));
  const bindfs = spawn('bindfs', ['-f', '-o', 'allow_other', lower, upper], { stdio: 'ignore' });
  try {
    const until = Date.now() + 15000;
    while (!readFileSync('/proc/self/mountinfo', 'utf8').includes(` ${upper} `)) {
      if (Date.now() > until || bindfs.exitCode !== null) throw new Error('bindfs did not mount');
      await new Promise((r) => setTimeout(r, 50));
    }
    await withPassthrough(
      async (dir, src) => {
        const out = await sh(
          `
          cd "${dir}"
          echo one > a && ln a b && rm a && cat b
          echo two >> b && ln b c && rm c && cat b
          ln b d && mv d e && rm b && cat e
          echo three > f && ln f g && cat g >/dev/null && rm "${lower}${src.slice(upper.length)}/g" && cat f
          git init -q g && cd g && git config user.email t@t && git config user.name t
          seq 1000 > f && git add f && git commit -qm one && seq 2000 > f && git commit -qam two
          git gc -q && git fsck 2>&1 && git log --oneline | wc -l
          `,
        );
        assert.deepEqual(out.trim().split('\n'), ['one', 'one', 'two', 'one', 'two', 'three', '2']);
        assert.equal(readFileSync(join(lower, src.slice(upper.length), 'e'), 'utf8'), 'one\ntwo\n', 'on the host under the name that stayed');
      },
      [],
      upper,
    );
  } finally {
    await execFileP('umount', [upper]).catch(() => undefined);
    bindfs.kill();
    rmSync(upper, { recursive: true, force: true });
    rmSync(lower, { recursive: true, force: true });
  }
});

test('passthrough over a FUSE source without POSIX ACLs (a memory-backend mount): modes decide, ACLs are refused, read-only creations are written, groups are the callers\'', async () => {
  // The tenant's kernel asks for the ACL of a file its caller does not own; a source without
  // ACLs answers ENOTSUP, which must not turn into an error of the caller's open or stat.
  await withMount((memory) =>
    withPassthrough(
      async (dir, src) => {
        chmodSync(src, 0o755);
        const out = await sh(
          `
          cd "${dir}"
          echo mine > f && chown 1000:1000 f && chmod 664 f
          mkdir d && chown 1000:1000 d && chmod 775 d && touch d/x
          cat f; ls d; ${as(2000, 2000)} cat f; ${as(2000, 2000)} ls d
          ${as(2000, 2000)} sh -c 'echo no >> f' 2>/dev/null && echo LEAK || echo denied
          setfacl -m u:2000:rw f 2>/dev/null && echo LEAK || echo no-acls
          # A file created read-only and written through the descriptor that created it (git's
          # objects): the source checks opens itself, so the kernel cannot reopen it for this.
          cd d && ${as(1000, 1000)} /usr/bin/python3 -c 'import os; fd = os.open("ro", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o444); os.write(fd, b"object\\n"); os.close(fd)' && cat ro
          # Supplementary groups come from /proc: a process that used the mount as root, then
          # took other ids and groups, is known by its new ones (here and by the source, whose
          # caller is our pool thread, taking each caller's ids and groups in turn).
          cd .. && touch g && chown 65534:65532 g
          for i in 1 2 3 4; do
            /usr/bin/python3 -c 'import os; os.stat("g"); os.setgroups([65531]); os.setgid(65532); os.setuid(65534); os.chown("g", -1, 65531); os.chown("g", -1, 65532)'
          done
          setpriv --reuid=65534 --regid=65532 --groups=65531 -- chgrp 65531 g
          stat -c %g g
          `,
        );
        assert.deepEqual(out.trim().split('\n'), ['mine', 'x', 'mine', 'x', 'denied', 'no-acls', 'object', '65531']);
      },
      [],
      memory,
    ),
  );
});

test('passthrough: serves far more inodes than the descriptor limit with bounded descriptors', async () => {
  await withPassthrough(
    async (dir, src, d) => {
      await sh(`cd "${src}" && for d in $(seq 1 25); do mkdir d$d; (cd d$d && seq 1 1000 | xargs touch); done`, { timeout: 300000 });
      // stat every file through the mount: the kernel keeps all 25,000+ inodes referenced.
      const n = (await sh(`find "${dir}" -type f -printf '%i\\n' | wc -l`, { timeout: 300000 })).trim();
      assert.equal(n, '25000');
      const fds = readdirSync(`/proc/${d.child.pid}/fd`).length;
      assert.ok(fds < 600, `daemon holds ${fds} descriptors`);
      // And they still resolve after eviction: read a few far apart.
      assert.equal((await sh(`cat "${dir}/d1/1" "${dir}/d25/1000" | wc -c`)).trim(), '0');
      assert.equal((await sh(`echo hi > "${dir}/d3/7" && cat "${src}/d3/7"`)).trim(), 'hi');
    },
    ['--max-fds', '256'],
  );
});

bothSources('inodes whose descriptors were evicted are reopened by handle', async (parent) => {
  await withPassthrough(
    async (dir, src) => {
      await sh(`mkdir "${src}/d" && cd "${src}/d" && for i in $(seq 1 200); do echo "file $i" > f$i; done`);
      // The first pass looks every file up (200 inodes, at most 16 descriptors); the second
      // opens them all again, most of them through their handle.
      await sh(`cat "${dir}"/d/f* > /dev/null`);
      const all = await sh(`for i in $(seq 1 200); do cat "${dir}/d/f$i"; done`);
      assert.equal(all, Array.from({ length: 200 }, (_, i) => `file ${i + 1}\n`).join(''));
      await sh(`echo rewritten > "${dir}/d/f1" && touch "${dir}/d/f2" && mkdir "${dir}/d/f3.d"`);
      assert.equal(readFileSync(join(src, 'd/f1'), 'utf8'), 'rewritten\n');
      assert.ok(statSync(join(src, 'd/f3.d')).isDirectory());
    },
    ['--max-fds', '16'],
    parent,
  );
});

test('passthrough over a FUSE source: inodes whose descriptors were evicted are reopened by name once the source forgot them', async () => {
  // A FUSE file system's handles open an inode only while its kernel has it cached (without
  // export support): a directory the tenant holds (a shell's cwd) and a file in it, their
  // descriptors evicted by a walk of 300 others, then the host's caches dropped.
  await withMount((memory) =>
    withPassthrough(
      async (dir, src) => {
        await sh(`cd "${src}" && mkdir 0held && echo kept > 0held/f && for i in $(seq 300); do mkdir d$i; done`);
        const holder = spawn('bash', ['-c', 'read line; cat f; ls; echo moved > g; mv g h; cat h'], { cwd: join(dir, '0held'), stdio: ['pipe', 'pipe', 'inherit'] });
        let out = '';
        holder.stdout.on('data', (b: Buffer) => (out += b.toString()));
        const done = new Promise((r) => holder.on('exit', r));
        try {
          await sh(`ls -R "${dir}" > /dev/null && sync && echo 3 > /proc/sys/vm/drop_caches`);
          holder.stdin.end('go\n');
          assert.equal(await done, 0, out);
          assert.deepEqual(out.trim().split('\n'), ['kept', 'f', 'moved']);
        } finally {
          holder.kill();
        }
      },
      ['--max-fds', '64'],
      memory,
    ),
  );
});

test('passthrough: a host inode number freed and reused while the kernel still knows the old inode leads to the new one', async () => {
  // Disk file systems (ext4 here) give a freed inode number to the next file made; a node
  // whose descriptor was evicted no longer holds its inode, so only the handle tells them apart.
  const src = mkdtempSync(join(tmpdir(), 'dpfs-reuse-'));
  try {
    await withPassthroughPeer(
      src,
      async (p) => {
        const lookup = async (name: string) => {
          const r = await p.call(Opcode.FUSE_LOOKUP, 1, { name });
          assert.equal(r.error, 0, name);
          return { node: Number(r.body.readBigUInt64LE(0)), ino: Number(r.body.readBigUInt64LE(40)) };
        };
        let reuses = 0;
        for (let i = 0; i < 20 && reuses < 3; i++) {
          writeFileSync(join(src, `old${i}`), 'old');
          const old = await lookup(`old${i}`); // the kernel keeps this reference: no FORGET
          for (let j = 0; j < 8; j++) {
            writeFileSync(join(src, `other${i}.${j}`), '');
            await lookup(`other${i}.${j}`); // evicts old's descriptor (max 4)
          }
          rmSync(join(src, `old${i}`));
          writeFileSync(join(src, `new${i}`), 'new data');
          if (statSync(join(src, `new${i}`)).ino !== old.ino) continue; // not reused this time
          reuses++;
          const fresh = await lookup(`new${i}`);
          assert.notEqual(fresh.node, old.node, 'a new node for the new inode');
          const o = await p.call(Opcode.FUSE_OPEN, fresh.node, { flags: 0 });
          assert.equal(o.error, 0);
          const r = await p.call(Opcode.FUSE_READ, fresh.node, { fh: o.body.readBigUInt64LE(0), offset: 0n, size: 100, read_flags: 0, lock_owner: 0n, flags: 0, padding: 0 });
          assert.equal(r.body.toString(), 'new data');
          assert.equal((await p.call(Opcode.FUSE_GETATTR, old.node, { getattr_flags: 0, dummy: 0, fh: 0 })).error, -Errno.ESTALE, 'the old node is stale');
        }
        assert.ok(reuses > 0, 'the host reused an inode number');
      },
      { maxFds: 4 },
    );
  } finally {
    rmSync(src, { recursive: true, force: true });
  }
});

bothSources('escapes through symlinks, "..", /proc reopen and renames all fail', async (parent) => {
  const outside = mkdtempSync(join(tmpdir(), 'dpfs-outside-'));
  const src = mkdtempSync(join(parent, 'dpfs-src-'));
  try {
    writeFileSync(join(outside, 'secret'), 'TOP SECRET');
    mkdirSync(join(outside, 'dir'));
    symlinkSync(join(outside, 'secret'), join(src, 'abs'));
    symlinkSync('../' + join('..', outside, 'secret'), join(src, 'rel'));
    symlinkSync(join(outside, 'dir'), join(src, 'dirlink'));
    writeFileSync(join(src, 'inside'), 'ok');
    await withPassthroughPeer(src, async (p) => {
      const lookup = async (parent: number, name: string) => {
        const r = await p.call(Opcode.FUSE_LOOKUP, parent, { name });
        return { error: r.error, ino: r.error ? 0 : Number(r.body.readBigUInt64LE(0)) };
      };
      // A hostile peer sends what a kernel never would.
      assert.equal((await lookup(1, '..')).error, -Errno.EPERM);
      assert.equal((await lookup(1, '.')).error, -Errno.EPERM);
      assert.equal((await p.call(Opcode.FUSE_LOOKUP, 1, { name: '../etc' })).error, -Errno.EINVAL);
      for (const name of ['abs', 'rel', 'dirlink']) {
        const l = await lookup(1, name);
        assert.equal(l.error, 0, name);
        assert.equal((await p.call(Opcode.FUSE_OPEN, l.ino, { flags: 0 })).error, -Errno.ELOOP, `open ${name}`);
        assert.equal((await p.call(Opcode.FUSE_OPENDIR, l.ino, { flags: 0 })).error, -Errno.ENOTDIR, `opendir ${name}`);
        assert.equal((await p.call(Opcode.FUSE_SETATTR, l.ino, { valid: 8, size: 0 })).error, -Errno.EINVAL, `truncate ${name}`);
        assert.equal((await p.call(Opcode.FUSE_SETATTR, l.ino, { valid: 1, mode: 0o777 })).error, -Errno.EOPNOTSUPP, `chmod ${name}`);
        assert.equal((await p.call(Opcode.FUSE_SETXATTR, l.ino, { size: 1, flags: 0, name: 'trusted.x', value: Buffer.from('x') })).error, -Errno.EPERM);
        assert.notEqual((await p.call(Opcode.FUSE_MKDIR, l.ino, { mode: 0o755, umask: 0, name: 'x' })).error, 0, `mkdir under ${name}`);
        assert.notEqual((await p.call(Opcode.FUSE_CREATE, l.ino, { flags: 0o101, mode: 0o100644, umask: 0, name: 'x' })).error, 0);
        // Hard-linking the symlink links the symlink, never its target.
        assert.equal((await p.call(Opcode.FUSE_LINK, 1, { oldnodeid: l.ino, newname: `${name}-hard` })).error, 0);
        assert.ok(lstatSync(join(src, `${name}-hard`)).isSymbolicLink());
      }
      const d = await lookup(1, 'dirlink');
      const rd = await p.call(Opcode.FUSE_READLINK, d.ino, {});
      assert.equal(rd.body.toString(), join(outside, 'dir'), 'readlink returns the text, resolving nothing');
      // Unknown inode numbers are stale, not guessed.
      assert.equal((await p.call(Opcode.FUSE_GETATTR, 999999, {})).error, -Errno.ESTALE);
      assert.equal((await p.call(Opcode.FUSE_LINK, 1, { oldnodeid: 424242, newname: 'h' })).error, -Errno.ESTALE);
      assert.equal(readFileSync(join(outside, 'secret'), 'utf8'), 'TOP SECRET');
      assert.deepEqual(readdirSync(join(outside, 'dir')), [], 'nothing was created outside');
    });
  } finally {
    rmSync(outside, { recursive: true, force: true });
    rmSync(src, { recursive: true, force: true });
  }
});

bothSources('a directory swapped for a symlink mid-operation never leads outside', async (parent) => {
  const outside = mkdtempSync(join(tmpdir(), 'dpfs-outside-'));
  try {
    await withPassthrough(async (dir, src) => {
      // One process flips src/d between a real directory and a symlink to the outside, on
      // the host and through the mount; the tenant keeps creating and writing through d.
      // The tenant runs in its own mount namespace where the outside directory is an empty
      // tmpfs: when its kernel follows the symlink itself, it lands there (as a VM's kernel
      // would land in its own tree). Only the daemon could put files in the real one.
      const out = await sh(
        `
        cd "${dir}" && mkdir real && ln -s "${outside}" "${src}/planted"
        ( end=$((SECONDS + 6)); while [ $SECONDS -lt $end ]; do
            mv -T real d 2>/dev/null; sleep 0.02; mv -T d real 2>/dev/null
            ln -sfn "${outside}" "${src}/d" 2>/dev/null; sleep 0.02; rm -f "${src}/d"
          done ) &
        unshare -m --propagation private sh -c '
          mount -t tmpfs tenant-view "${outside}" || exit 1
          cd "${dir}"; echo x > planted/f0; mkdir planted/m0; ln planted/f0 planted/l0; : > planted/f0
          end=$(($(date +%s) + 6)); i=0
          while [ $(date +%s) -lt $end ]; do
            i=$((i + 1)); echo x > "d/f$i" 2>/dev/null; mkdir "d/m$i" 2>/dev/null; : > d/t 2>/dev/null; ln d/t "d/l$i" 2>/dev/null
          done; true' &
        wait; echo done
        `,
        { timeout: 60000 },
      );
      assert.equal(out.trim(), 'done');
    }, ['--cache', 'never'], parent); // no cached names: every walk through d asks the daemon
    // Any file the tenant made "through d" while d pointed outside must not exist outside.
    assert.deepEqual(readdirSync(outside), [], 'nothing escaped');
  } finally {
    rmSync(outside, { recursive: true, force: true });
  }
});

test('passthrough: read-only export and id mapping', async () => {
  await withPassthrough(
    async (dir, src) => {
      writeFileSync(join(src, 'f'), 'x');
      await execFileP('chown', ['2000:2000', join(src, 'f')]);
      const out = await sh(`stat -c '%u:%g' "${dir}/f"; echo y > "${dir}/g" 2>/dev/null && echo LEAK || echo read-only`);
      assert.deepEqual(out.trim().split('\n'), ['1000:1000', 'read-only']);
    },
    ['--read-only', '--uid-map', '0:0:1,1000:2000:1', '--gid-map', '0:0:1,1000:2000:1'],
  );
});

for (const mode of [['--cache', 'never'], ['--cache', 'always'], ['--cache', 'always', '--writeback'], ['--direct-io', '--no-xattr']]) {
  test(`passthrough ${mode.join(' ')}: coreutils, sqlite3 and fio verify`, () =>
    withPassthrough(async (dir) => {
      await workloads['coreutils: create, link, rename, chmod, truncate, stat, remove']!(dir);
      await workloads['sqlite3: transactions, rollback journal and WAL, integrity_check']!(dir);
      await workloads['fio with --verify: random and sequential writes read back intact']!(dir);
    }, mode));
}

test('passthrough --writeback: appends land on the host where the tenant put them; write-only files and UTIME_NOW keep their rules', () =>
  withPassthrough(async (dir, src) => {
    // The kernel places appends itself and writes whole dirty pages back at their offsets:
    // a host descriptor opened O_APPEND would move each of them to the end of the file again.
    const out = await sh(
      `
      cd "${dir}"
      for i in 1 2 3; do head -c 100000 /dev/urandom > a$i; head -c 5000 /dev/urandom >> a$i; done
      python3 - <<'PY'
import os
a = os.open('b', os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
b = os.open('b', os.O_WRONLY | os.O_APPEND)
for i in range(40):
    os.write(a if i % 2 else b, bytes([65 + i % 26]) * (1000 + i))
os.close(a); os.close(b)
PY
      for f in a1 a2 a3 b; do cmp "$f" "${src}/$f" && stat -c '%s' "${src}/$f"; done
      # The daemon opens files read-write for the kernel's writeback, but a file its owner
      # may only write still opens for writing (and its partial pages are read back whole).
      chmod 1777 . && ${as(1000, 1000)} sh -c 'printf "hello world" > wo && chmod 200 wo && printf XY | dd of=wo bs=1 seek=3 conv=notrunc status=none && cat wo 2>/dev/null || echo unreadable'
      cat "${src}/wo"; echo
      # UTIME_NOW needs write permission only; the kernel sends it as a time of its own.
      touch -d 2001-01-01 g && chmod 666 g && ${as(1001, 1001)} touch g && stat -c '%Y' "${src}/g" | awk '{ print ($1 > 1e9 + 1e8) ? "now" : "old" }'
      ${as(1001, 1001)} touch -d 2002-02-02 g 2>/dev/null && echo LEAK || echo denied
      # SEEK_DATA/SEEK_HOLE of data not written back yet: the kernel's own size answers.
      python3 -c "import os; fd = os.open('h', os.O_CREAT | os.O_RDWR, 0o644); os.write(fd, b'x' * 5000); print(os.lseek(fd, 0, os.SEEK_DATA), os.lseek(fd, 0, os.SEEK_HOLE))"
      `,
    );
    assert.deepEqual(out.trim().split('\n'), ['105000', '105000', '105000', String(40 * 1000 + (39 * 40) / 2), 'unreadable', 'helXY world', 'now', 'denied', '0 5000']);
  }, ['--cache', 'always', '--writeback']));

test('passthrough --writeback: a CREATE that finds a file its caller may write but not read opens it for writing, widened for the kernel', async () => {
  // The kernel sends CREATE where it believed the name absent (the host made it meanwhile).
  const src = mkdtempSync(join(tmpdir(), 'dpfs-wo-'));
  try {
    chmodSync(src, 0o755);
    writeFileSync(join(src, 'wo'), 'hello world');
    await execFileP('chown', ['1000:1000', join(src, 'wo')]);
    await execFileP('chmod', ['0200', join(src, 'wo')]);
    await withPassthroughPeer(
      src,
      async (p) => {
        const c = await p.call(Opcode.FUSE_CREATE, 1, { flags: 0o101 /* O_WRONLY | O_CREAT */, mode: 0o100644, umask: 0, name: 'wo' }, { uid: 1000, gid: 1000 });
        assert.equal(c.error, 0, 'opened for writing as asked');
        const ino = Number(c.body.readBigUInt64LE(0));
        const fh = c.body.readBigUInt64LE(128);
        // The kernel reads the rest of a page it writes in part: the daemon's descriptor can.
        const r = await p.call(Opcode.FUSE_READ, ino, { fh, offset: 0n, size: 100, read_flags: 0, lock_owner: 0n, flags: 0, padding: 0 }, { uid: 1000, gid: 1000 });
        assert.equal(r.error, 0);
        assert.equal(r.body.toString(), 'hello world');
        // Another caller may not write it at all.
        const other = await p.call(Opcode.FUSE_CREATE, 1, { flags: 0o101, mode: 0o100644, umask: 0, name: 'wo' }, { uid: 1001, gid: 1001 });
        assert.equal(other.error, -Errno.EACCES);
      },
      { writeback: true },
    );
  } finally {
    rmSync(src, { recursive: true, force: true });
  }
});

bothSources('O_TMPFILE, copy_file_range, SEEK_DATA/SEEK_HOLE, fallocate reach the host', async (parent) => {
  await withPassthrough(async (dir, src) => {
    const out = await sh(
      `
      cd "${dir}"
      python3 - <<'PY'
import ctypes, os
fd = os.open('.', os.O_TMPFILE | os.O_RDWR, 0o600)
os.write(fd, b'anonymous')
# linkat(AT_FDCWD, "/proc/self/fd/N", AT_FDCWD, "named", AT_SYMLINK_FOLLOW): give it a name.
libc = ctypes.CDLL(None, use_errno=True)
assert libc.linkat(-100, b'/proc/self/fd/%d' % fd, -100, b'named', 0x400) == 0, os.strerror(ctypes.get_errno())
print(open('named').read())
a = os.open('named', os.O_RDONLY); b = os.open('copy', os.O_CREAT | os.O_WRONLY, 0o644)
print(os.copy_file_range(a, b, 9))
s = os.open('sparse', os.O_CREAT | os.O_RDWR, 0o644)
os.ftruncate(s, 8 << 20); os.pwrite(s, b'x', 4 << 20)
print(os.lseek(s, 0, os.SEEK_DATA), os.lseek(s, 4 << 20, os.SEEK_HOLE))
os.posix_fallocate(s, 0, 1 << 20)
PY
      cat copy; echo
      du -k "${src}/sparse" | cut -f1
      `,
    );
    const [named, copied, seek, copy, du] = out.trim().split('\n');
    assert.equal(named, 'anonymous');
    assert.equal(copied, '9');
    assert.equal(seek, `${4 << 20} ${(4 << 20) + 4096}`);
    assert.equal(copy, 'anonymous');
    assert.ok(Number(du) >= 1024 && Number(du) < 2048, `fallocated 1 MiB on the host (${du} KiB)`);
  }, [], parent);
});

bothSources('the kernel does reads and writes of open files itself (FUSE passthrough)', async (parent) => {
  await withPassthrough(
    async (dir, src, d) => {
      const out = await sh(
        `
        dd if=/dev/urandom of="${dir}/k" bs=1M count=8 status=none
        a=$(sha256sum < "${dir}/k"); b=$(sha256sum < "${src}/k"); [ "$a" = "$b" ] && echo same
        exec 3<>"${dir}/k"; cat "${dir}/k" > /dev/null; exec 3>&-   # two opens of one inode share its backing file
        `,
      );
      assert.equal(out.trim(), 'same');
      const log = d.stderr();
      assert.match(log, /"op":"FUSE_CREATE"/, 'the trace is on');
      assert.doesNotMatch(log, /"op":"FUSE_(WRITE|READ)"/, 'no READ or WRITE reached the daemon');
    },
    ['--debug'],
    parent,
  );
});

bothSources('a READ or WRITE on an open FIFO waits off the event loop (a peer may never come)', async (parent) => {
  const src = mkdtempSync(join(parent, 'dpfs-src-'));
  try {
    await sh(`mkfifo "${src}/p"`);
    await withPassthroughPeer(src, async (p) => {
      const l = await p.call(Opcode.FUSE_LOOKUP, 1, { name: 'p' });
      const ino = Number(l.body.readBigUInt64LE(0));
      // O_RDWR: a FIFO opened so does not wait for the other end (what no kernel client sends,
      // since kernels serve FIFOs themselves; a hostile peer may).
      const o = await p.call(Opcode.FUSE_OPEN, ino, { flags: 2 });
      assert.equal(o.error, 0);
      const fh = Number(o.body.readBigUInt64LE(0));
      const read = p.call(Opcode.FUSE_READ, ino, { fh, offset: 0, size: 16 });
      let ticks = 0;
      await new Promise<void>((resolve) => {
        const t = setInterval(() => ++ticks === 5 && (clearInterval(t), resolve()), 10);
      });
      assert.equal(ticks, 5, 'the event loop went on while the READ waited for data');
      const w = openSync(join(src, 'p'), 'w');
      writeFileSync(w, 'through the pipe');
      closeSync(w);
      const r = await read;
      assert.equal(r.error, 0);
      assert.equal(r.body.toString(), 'through the pipe');
      // More than the pipe holds, with nobody reading yet: written as far as there is room (a
      // short write, as a pipe gives), never waited for on the event loop.
      const big = Buffer.alloc(100_000, 7);
      let written: number | undefined;
      const write = p.call(Opcode.FUSE_WRITE, ino, { fh, offset: 0, size: big.length, data: big }).then((w) => {
        assert.equal(w.error, 0);
        written = w.body.readUInt32LE(0);
      });
      ticks = 0;
      await new Promise<void>((resolve) => {
        const t = setInterval(() => ++ticks === 5 && (clearInterval(t), resolve()), 10);
      });
      assert.equal(ticks, 5, 'the event loop went on while the WRITE waited for room');
      const rfd = openSync(join(src, 'p'), constants.O_RDONLY | constants.O_NONBLOCK);
      let drained = 0;
      const chunk = Buffer.alloc(65536);
      try {
        for (let tries = 0; (written === undefined || drained < written) && tries < 500; tries++) {
          try {
            drained += readSync(rfd, chunk);
          } catch (err) {
            if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
            await new Promise((res) => setTimeout(res, 5));
          }
        }
      } finally {
        closeSync(rfd);
      }
      await write;
      assert.ok(written! > 0 && written! <= big.length, `wrote ${written}`);
      assert.equal(drained, written, 'what the WRITE reported is what came out of the pipe');
    });
  } finally {
    rmSync(src, { recursive: true, force: true });
  }
});
