/**
 * Real-program workloads run against any mounted dpfs backend. Each takes the mount
 * directory, runs programs in separate processes, and asserts what they produced.
 */
import assert from 'node:assert/strict';
import { sh } from './daemon.js';

export const workloads: Record<string, (dir: string) => Promise<void>> = {
  'coreutils: create, link, rename, chmod, truncate, stat, remove': async (dir) => {
    const out = await sh(
      `
      cd "${dir}"
      mkdir -p a/b/c && echo one > a/b/c/f && cp a/b/c/f a/g
      ln a/g a/hard && ln -s b/c/f a/sym
      mv a/b/c a/moved && test ! -e a/b/c && cat a/sym 2>/dev/null || echo dangling
      chmod 640 a/g && touch -d '2001-02-03 04:05:06.123456789' a/g
      truncate -s 1M a/sparse && printf x | dd of=a/sparse bs=1 seek=500000 conv=notrunc status=none
      stat -c '%n %a %h %s' a/g a/hard a/sparse
      stat -c '%y' a/g
      du -k a/sparse | cut -f1
      cat a/moved/f a/hard
      find . | sort
      rm -r a && ls -A | wc -l
      `,
    );
    const lines = out.trim().split('\n');
    assert.equal(lines[0], 'dangling', 'symlink target moved away');
    assert.equal(lines[1], 'a/g 640 2 4');
    assert.equal(lines[2], 'a/hard 640 2 4');
    assert.equal(lines[3], 'a/sparse 644 1 1048576');
    assert.equal(lines[4], '2001-02-03 04:05:06.123456789 +0000', 'nanosecond timestamps');
    assert.ok(Number(lines[5]) <= 128, `sparse file allocates little (${lines[5]} KiB)`);
    assert.deepEqual(lines.slice(6, 8), ['one', 'one']);
    assert.deepEqual(lines.slice(8, -1), ['.', './a', './a/b', './a/g', './a/hard', './a/moved', './a/moved/f', './a/sparse', './a/sym']);
    assert.equal(lines.at(-1), '0');
  },
  'tar round trip preserves contents and metadata; a 64 MiB file survives': async (dir) => {
    const out = await sh(
      `
      src=$(mktemp -d); trap 'rm -rf "$src"' EXIT
      for i in $(seq 1 200); do mkdir -p "$src/d$((i % 13))"; head -c $((i * 97)) /dev/urandom > "$src/d$((i % 13))/f$i"; done
      ln "$src/d1/f1" "$src/d2/hard"; ln -s ../d1/f1 "$src/d3/sym"; chmod 600 "$src/d4/f4"; mkfifo "$src/fifo"
      head -c 64M /dev/urandom > "$src/big"
      tar -C "$src" -cf - . | tar -C "${dir}" -xpf -
      (cd "$src" && find . -type f -print0 | sort -z | xargs -0 sha256sum) > /tmp/sums.$$
      (cd "${dir}" && sha256sum -c --quiet /tmp/sums.$$) && echo sums-ok; rm /tmp/sums.$$
      tar -C "$src" -cf /tmp/t.$$ . && tar -C "${dir}" --compare -f /tmp/t.$$ && echo compare-ok; rm /tmp/t.$$
      stat -c '%h %a' "${dir}/d2/hard" "${dir}/d4/f4"; stat -c '%F' "${dir}/fifo"; readlink "${dir}/d3/sym"
      `,
      { timeout: 300000 },
    );
    assert.deepEqual(out.trim().split('\n'), ['sums-ok', 'compare-ok', '2 644', '1 600', 'fifo', '../d1/f1']);
  },
  'git init, add, commit, fsck, clone': async (dir) => {
    const out = await sh(
      `
      export GIT_AUTHOR_NAME=t GIT_AUTHOR_EMAIL=t@e GIT_COMMITTER_NAME=t GIT_COMMITTER_EMAIL=t@e HOME="${dir}"
      cd "${dir}" && git init -q repo && cd repo
      for i in $(seq 1 50); do echo "line $i" > "file$i.txt"; done
      git add . && git commit -qm first
      sed -i 's/line/LINE/' file7.txt && git commit -qam second && git gc -q
      git fsck --full --strict 2>&1 && git log --oneline | wc -l
      git clone -q "${dir}/repo" "${dir}/clone" && cat "${dir}/clone/file7.txt"
      `,
    );
    assert.deepEqual(out.trim().split('\n').slice(-2), ['2', 'LINE 7']);
  },
  'sqlite3: transactions, rollback journal and WAL, integrity_check': async (dir) => {
    const out = await sh(
      `
      cd "${dir}"
      for mode in delete wal; do
        sqlite3 "db-$mode.sqlite" "PRAGMA journal_mode=$mode;" >/dev/null
        sqlite3 "db-$mode.sqlite" "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
          BEGIN; WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 20000) INSERT INTO t(v) SELECT hex(randomblob(32)) FROM c; COMMIT;
          CREATE INDEX iv ON t(v); DELETE FROM t WHERE id % 3 = 0; VACUUM;"
        sqlite3 "db-$mode.sqlite" "PRAGMA integrity_check; SELECT count(*) FROM t;"
      done
      `,
    );
    assert.deepEqual(out.trim().split('\n'), ['ok', '13334', 'ok', '13334']);
  },
  'fio with --verify: random and sequential writes read back intact': async (dir) => {
    const out = await sh(
      `
      fio --verify_state_save=0 --name=rand --directory="${dir}" --rw=randwrite --bs=4k --size=32m --numjobs=2 --ioengine=psync \
          --verify=crc32c --verify_fatal=1 --do_verify=1 --output-format=terse --minimal >/dev/null
      fio --verify_state_save=0 --name=seq --directory="${dir}" --rw=write --bs=1m --size=64m --ioengine=psync \
          --verify=sha256 --verify_fatal=1 --do_verify=1 --output-format=terse --minimal >/dev/null
      fio --verify_state_save=0 --name=mixed --directory="${dir}" --rw=randrw --bs=16k --size=16m --iodepth=8 --ioengine=libaio \
          --verify=md5 --verify_fatal=1 --output-format=terse --minimal >/dev/null
      echo verified
      `,
      { timeout: 300000 },
    );
    assert.equal(out.trim(), 'verified');
  },
  'stress-ng file-system stressors with verification': async (dir) => {
    const out = await sh(
      `
      cd "${dir}"
      stress-ng --temp-path "${dir}" --hdd 2 --hdd-bytes 8m --dir 1 --link 1 --symlink 1 --rename 1 \
        --fallocate 1 --flock 2 --lockf 2 --dentry 1 --seek 1 --xattr 1 --chmod 1 --utime 1 --fstat 1 \
        --timeout 8s --verify --metrics-brief 2>&1 | tail -3
      echo "rc=$?"
      ls -A "${dir}" | wc -l
      `,
      { timeout: 240000 },
    );
    assert.match(out, /successful run completed/);
    assert.match(out, /rc=0/);
    assert.equal(out.trim().split('\n').at(-1), '0', 'stress-ng cleaned up after itself');
  },
};

/**
 * flock and fcntl locks contending across processes, and a waiter blocked in SETLKW that a
 * signal interrupts (FUSE INTERRUPT).
 */
export async function lockContention(dir: string): Promise<void> {
  const out = await sh(
    `
    cd "${dir}" && touch lockfile
    flock lockfile -c 'sleep 1.5' & sleep 0.5
    flock -n lockfile true && echo LEAK || echo flock-busy
    wait; flock -n lockfile true && echo flock-free
    python3 - <<'PY'
import fcntl, os, time, signal
fd = os.open('lockfile', os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 100, 0)
pid = os.fork()
if pid == 0:
  fd2 = os.open('lockfile', os.O_RDWR)
  try:
      fcntl.lockf(fd2, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 50)
      print('LEAK', flush=True)
  except OSError:
      print('range-busy', flush=True)
  fcntl.lockf(fd2, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 200)
  print('other-range-ok', flush=True)
  def on_alarm(*a):
      raise TimeoutError()
  signal.signal(signal.SIGALRM, on_alarm)
  signal.alarm(1)
  try:
      fcntl.lockf(fd2, fcntl.LOCK_EX, 10, 50)
      print('LEAK', flush=True)
  except TimeoutError:
      print('wait-interrupted', flush=True)
  os._exit(0)
os.waitpid(pid, 0)
fcntl.lockf(fd, fcntl.LOCK_UN, 100, 0)
print('done', flush=True)
PY
    `,
  );
  assert.deepEqual(out.trim().split('\n'), ['flock-busy', 'flock-free', 'range-busy', 'other-range-ok', 'wait-interrupted', 'done']);
}
