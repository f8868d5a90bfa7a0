/*
 * What the native request paths (ring_fast.c for virtqueues, fusedev.c for /dev/fuse) share:
 * the SharedHandles protocol (src/fs/shared-handles.ts), the out header, and the GETATTR and
 * LOOKUP replies built from what a backend published.
 */
#ifndef DPFS_PUBLISHED_H
#define DPFS_PUBLISHED_H

#include "common.h"

#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

/* FUSE wire layout (fuse.h). */
#define IN_HEADER 40
#define OUT_HEADER 16
#define FUSE_LOOKUP 1
#define FUSE_GETATTR 3
#define FUSE_UNLINK 10
#define FUSE_RMDIR 11
#define FUSE_GETATTR_FH (1u << 0)
#define GETATTR_REQ 56 /* in header and fuse_getattr_in */
#define ATTR_OUT 104   /* fuse_attr_out */
#define GETATTR_REPLY (OUT_HEADER + ATTR_OUT)
#define ENTRY_OUT 128 /* fuse_entry_out */
#define NAME_MAX_BYTES 255

/* SharedHandles: slots of 6 int32 words (see shared-handles.ts). */
#define SH_SLOTS 4096
#define SH_WORDS 6
#define SH_TABLE_BYTES ((size_t)SH_SLOTS * SH_WORDS * 4)
#define SH_STATE 0
#define SH_FH_LO 1
#define SH_FH_HI 2
#define SH_FD 3
#define SH_FLAGS 4
#define SH_USERS 5
#define SH_LIVE 1
#define SH_READ 1
#define SH_WRITE 2
#define SH_READ_AT_ONCE 4
#define SH_WRITE_AT_ONCE 8
#define SH_STAT_AT_ONCE 16
#define SH_LOOKUP_AT_ONCE 32
#define SH_UNLINK_AT_ONCE 64
#define SH_TIMEOUT_SHIFT 8

static inline uint32_t u32_at(const uint8_t *b, size_t at) {
  uint32_t v;
  memcpy(&v, b + at, 4);
  return v;
}

static inline uint64_t u64_at(const uint8_t *b, size_t at) {
  uint64_t v;
  memcpy(&v, b + at, 8);
  return v;
}

/*
 * Enters the slot of `key` in a SharedHandles table as one of its users and returns it, or
 * NULL where the key is not published. An owner withdrawing a slot waits for its users in
 * 10 ms steps (an Atomics.wait, which no system call wakes), so leave() needs no wake-up.
 */
static inline int32_t *sh_enter(int32_t *table, uint64_t key) {
  int32_t *s = table + (size_t)((uint32_t)key % SH_SLOTS) * SH_WORDS;
  __atomic_fetch_add(&s[SH_USERS], 1, __ATOMIC_SEQ_CST);
  if (__atomic_load_n(&s[SH_STATE], __ATOMIC_SEQ_CST) == SH_LIVE && (uint32_t)s[SH_FH_LO] == (uint32_t)key && (uint32_t)s[SH_FH_HI] == (uint32_t)(key >> 32)) return s;
  __atomic_fetch_sub(&s[SH_USERS], 1, __ATOMIC_SEQ_CST);
  return NULL;
}

static inline void sh_leave(int32_t *s) {
  __atomic_fetch_sub(&s[SH_USERS], 1, __ATOMIC_SEQ_CST);
}

/* The out header of the reply to `req`: total length, error (0 or -errno), req's unique. */
static inline void out_header(uint8_t *out, uint32_t len, int32_t error, const uint8_t *req) {
  memcpy(out, &len, 4);
  memcpy(out + 4, &error, 4);
  memcpy(out + 8, req + 8, 8);
}

/* struct fuse_attr (88 bytes) from a statx, as the passthrough builds it (ids unmapped). */
static inline void fill_attr(uint8_t *a, const struct statx *st) {
  uint32_t zero = 0, mode = st->stx_mode;
  uint32_t rdev = (st->stx_rdev_minor & 0xff) | (st->stx_rdev_major << 8) | ((st->stx_rdev_minor & ~0xffu) << 12);
  int64_t at = st->stx_atime.tv_sec, mt = st->stx_mtime.tv_sec, ct = st->stx_ctime.tv_sec;
  memcpy(a, &st->stx_ino, 8);
  memcpy(a + 8, &st->stx_size, 8);
  memcpy(a + 16, &st->stx_blocks, 8);
  memcpy(a + 24, &at, 8);
  memcpy(a + 32, &mt, 8);
  memcpy(a + 40, &ct, 8);
  memcpy(a + 48, &st->stx_atime.tv_nsec, 4);
  memcpy(a + 52, &st->stx_mtime.tv_nsec, 4);
  memcpy(a + 56, &st->stx_ctime.tv_nsec, 4);
  memcpy(a + 60, &mode, 4);
  memcpy(a + 64, &st->stx_nlink, 4);
  memcpy(a + 68, &st->stx_uid, 4);
  memcpy(a + 72, &st->stx_gid, 4);
  memcpy(a + 76, &rdev, 4);
  memcpy(a + 80, &st->stx_blksize, 4);
  memcpy(a + 84, &zero, 4); /* flags */
}

/* A host device as SharedNames.deviceWord gives it. */
static inline int32_t device_word(uint32_t major, uint32_t minor) {
  return (int32_t)(((major & 0xfffu) << 20) | (minor & 0xfffffu));
}

/*
 * The whole reply (out header and fuse_attr_out, GETATTR_REPLY bytes) to the GETATTR request
 * `req` (its GETATTR_REQ bytes, already checked to be a plain GETATTR) of an inode, or with
 * FUSE_GETATTR_FH an open file, that the backend published as one whose attributes are read
 * at once: one statx, the reply built as the passthrough builds it (attr timeout from the
 * slot's flags; ids as they are, since only backends that map none publish). False where
 * the key is not published so, or statx fails: the session then answers.
 */
static inline bool published_getattr(int32_t *handles, int32_t *inodes, const uint8_t *req, uint8_t *out) {
  bool by_fh = u32_at(req, 40) & FUSE_GETATTR_FH;
  int32_t *table = by_fh ? handles : inodes;
  int32_t *s = table ? sh_enter(table, by_fh ? u64_at(req, 48) : u64_at(req, 16)) : NULL;
  if (!s) return false;
  int flags = s[SH_FLAGS];
  struct statx st;
  bool ok = (flags & SH_STAT_AT_ONCE) && statx(s[SH_FD], "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS | STATX_BTIME, &st) == 0;
  sh_leave(s);
  if (!ok) return false;
  uint32_t zero = 0;
  out_header(out, GETATTR_REPLY, 0, req);
  uint8_t *a = out + OUT_HEADER;
  uint64_t valid = (uint32_t)flags >> SH_TIMEOUT_SHIFT;
  memcpy(a, &valid, 8); /* attr_valid, attr_valid_nsec, dummy */
  memcpy(a + 8, &zero, 4);
  memcpy(a + 12, &zero, 4);
  fill_attr(a + 16, &st);
  return true;
}

/*
 * The reply to the LOOKUP request `req` (n bytes, a plain LOOKUP already checked) in a
 * directory the backend published as one whose names resolve at once (held in memory), and
 * its length in *len (out must hold OUT_HEADER + ENTRY_OUT):
 *   - a name that does not exist: a negative entry for the slot's timeout (the kernel then
 *     remembers it as absent), or ENOENT where that is 0;
 *   - a name leading to an inode the backend published in `names` (SharedNames: by host
 *     inode number, node id in the descriptor word, host device in the flags word): its
 *     entry, attributes from the statx, both timeouts the directory's; the answer is
 *     counted in names_lookups (by slot) before it is sent, since the kernel's FORGET will
 *     count it.
 * LOOKUP_EXISTS: a name that exists but leads elsewhere (the call was in vain; callers may
 * stop asking where that is usual); LOOKUP_DECLINED: anything else (an odd name, another
 * error). The backend looks those up. Asked as the daemon, not as the caller: only where the
 * tenant's kernel checked the caller may search the directory (default_permissions), so that
 * the answer is what the caller would have been given too.
 */
enum lookup_outcome { LOOKUP_DECLINED, LOOKUP_ANSWERED, LOOKUP_EXISTS };

/* The name a LOOKUP, UNLINK or RMDIR request `req` (n bytes) carries, if it is one component,
 * NUL-terminated with nothing after, not "." or "..": what a kernel sends. NULL otherwise. */
static inline const char *one_name(const uint8_t *req, size_t n) {
  if (n < IN_HEADER + 2 || n > IN_HEADER + NAME_MAX_BYTES + 1) return NULL;
  const char *name = (const char *)req + IN_HEADER;
  size_t l = n - IN_HEADER - 1;
  if (name[l] != 0 || memchr(name, 0, l) || memchr(name, '/', l) || (name[0] == '.' && (l == 1 || (l == 2 && name[1] == '.')))) return NULL;
  return name;
}

static inline enum lookup_outcome published_lookup(int32_t *inodes, int32_t *names, double *names_lookups, const uint8_t *req, size_t n, uint8_t *out, uint32_t *len) {
  const char *name = inodes ? one_name(req, n) : NULL;
  if (!name) return LOOKUP_DECLINED;
  int32_t *s = sh_enter(inodes, u64_at(req, 16));
  if (!s) return LOOKUP_DECLINED;
  int flags = s[SH_FLAGS];
  struct statx st;
  int r = (flags & SH_LOOKUP_AT_ONCE) ? statx(s[SH_FD], name, AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT, STATX_BASIC_STATS | STATX_BTIME, &st) : -2;
  int err = errno;
  sh_leave(s);
  uint64_t valid = (uint32_t)flags >> SH_TIMEOUT_SHIFT, zero = 0;
  if (r == -1 && err == ENOENT) {
    *len = valid ? OUT_HEADER + ENTRY_OUT : OUT_HEADER;
    out_header(out, *len, valid ? 0 : -ENOENT, req);
    if (valid) {
      memset(out + OUT_HEADER, 0, ENTRY_OUT); /* node id 0: absent */
      memcpy(out + OUT_HEADER + 16, &valid, 8); /* entry_valid */
    }
    return LOOKUP_ANSWERED;
  }
  if (r != 0) return LOOKUP_DECLINED;
  int32_t *k = names ? sh_enter(names, st.stx_ino) : NULL;
  if (!k) return LOOKUP_EXISTS;
  uint64_t nodeid = (uint32_t)k[SH_FD];
  bool same = k[SH_FLAGS] == device_word(st.stx_dev_major, st.stx_dev_minor);
  size_t slot = (size_t)(k - names) / SH_WORDS;
  sh_leave(k);
  if (!same) return LOOKUP_EXISTS;
  names_lookups[slot] += 1;
  *len = OUT_HEADER + ENTRY_OUT;
  out_header(out, *len, 0, req);
  uint8_t *e = out + OUT_HEADER;
  memcpy(e, &nodeid, 8);
  memcpy(e + 8, &zero, 8); /* generation */
  memcpy(e + 16, &valid, 8); /* entry_valid */
  memcpy(e + 24, &valid, 8); /* attr_valid */
  memcpy(e + 32, &zero, 8); /* entry_valid_nsec, attr_valid_nsec */
  fill_attr(e + 40, &st);
  return LOOKUP_ANSWERED;
}

/*
 * UNLINK (or RMDIR, `dir`) of the name in `req` (n bytes, a plain request already checked)
 * in a directory the backend published as one where the daemon may remove names itself
 * (SH_UNLINK_AT_ONCE: held in memory, no ids mapped, and the daemon is root), for a caller
 * who is root too: the removal is then exactly the one the backend would make as that
 * caller. The answer, error or not, goes into `out` (OUT_HEADER bytes). False: the
 * session's (another caller, an odd name, a directory not published so).
 */
static inline bool published_unlink(int32_t *inodes, const uint8_t *req, size_t n, bool dir, uint8_t *out) {
  const char *name = inodes && u32_at(req, 24) == 0 ? one_name(req, n) : NULL;
  if (!name) return false;
  int32_t *s = sh_enter(inodes, u64_at(req, 16));
  if (!s) return false;
  bool mine = (s[SH_FLAGS] & SH_UNLINK_AT_ONCE) != 0;
  int r = mine ? unlinkat(s[SH_FD], name, dir ? AT_REMOVEDIR : 0) : 0;
  int err = errno;
  sh_leave(s);
  if (!mine) return false;
  out_header(out, OUT_HEADER, r == 0 ? 0 : -err, req);
  return true;
}

/*
 * Where a name found leads to an inode not published (not known yet), asking here cost a
 * statx in vain: after LOOKUP_IN_VAIN of those in a row, only one lookup in LOOKUP_RETRY is
 * tried until names answered here come back. One gate per reader (a /dev/fuse connection,
 * a ring).
 */
#define LOOKUP_IN_VAIN 8
#define LOOKUP_RETRY 16

struct lookup_gate {
  uint32_t in_vain; /* lookups in a row that found the name but not its inode */
};

static inline bool lookup_gate_open(struct lookup_gate *g) {
  return g->in_vain < LOOKUP_IN_VAIN || ++g->in_vain % LOOKUP_RETRY == 0;
}

static inline void lookup_gate_saw(struct lookup_gate *g, enum lookup_outcome o) {
  if (o == LOOKUP_ANSWERED) g->in_vain = 0;
  else if (o == LOOKUP_EXISTS && g->in_vain < LOOKUP_IN_VAIN) g->in_vain++;
}

#endif
