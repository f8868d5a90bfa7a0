/*
 * The data path of a virtio-fs request queue in one call: READ and WRITE requests on open
 * files a backend published (src/fs/shared-handles.ts), GETATTR of inodes it published and
 * LOOKUP in its directories held in memory (published.h) are taken from the avail ring,
 * done with one preadv/pwritev between the host file and guest memory (or one statx),
 * answered and returned to the used ring, without a JavaScript object per request.
 * Everything else stops the call *before* that chain is taken, and the JavaScript ring
 * (virtqueue.ts) takes it with its own checks: an unusual chain, a malformed or extended
 * request, another opcode, a handle not published, a read the page cache cannot answer at
 * once, any I/O error. So this file only has to be safe, never complete: whatever it
 * declines is served, or refused with a reason, the usual way.
 *
 *   ringFastCreate(desc, avail, used, num, indirect, regions, handles, inodes, counts, stall[, names, lookups]) -> context
 *       desc/avail/used: Uint8Arrays over the rings; regions: [gpa, Uint8Array, ...] (guest
 *       memory); handles, inodes: Int32Arrays of SharedHandles tables, by file handle and by
 *       node id (inodes may be null); names, lookups: a SharedNames table and its per-slot
 *       counts (null or left out: LOOKUPs are the session's; only with inodes, and only on
 *       the backend's own thread); counts: Float64Array(5) of running totals, COUNT_*,
 *       added to before each request's used entry is published (so a driver that sees the
 *       reply sees it counted); stall: Float64Array(2), the handle and ms of the last write
 *       at once that waited (ms 0: none since the caller cleared it). The arrays are
 *       referenced by the context, so the memory stays mapped.
 *   ringFastServe(context, lastAvail, usedIdx, max, writeAtOnceMax) -> chains served (0..max)
 *       The caller advances both indices by the count and decides on the interrupt; the
 *       call also ends once it has run BATCH_NS, so that the driver hears of a long copy's
 *       completion before the next one. writeAtOnceMax: the largest write on a handle marked
 *       "at once" that may run here (0: none); a write that took longer than STALL_NS ends
 *       the call and is reported, so the owner can send that device's writes elsewhere.
 *
 * Guest memory is shared with a guest that may change it at any time: every descriptor is
 * read once into a local copy and checked against the regions before any access, and the
 * request head is copied before it is parsed.
 */
#include "published.h"

#include <limits.h>
#include <stdint.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/resource.h>
#include <sys/uio.h>
#include <time.h>

#ifndef RWF_NOWAIT
#define RWF_NOWAIT 0x00000008
#endif

#define DESC_F_NEXT 1
#define DESC_F_WRITE 2
#define DESC_F_INDIRECT 4
#define MAX_REGIONS 32
#define MAX_IOV 1024
#define MAX_CHAIN_BYTES (32u * 1024 * 1024)

/* FUSE wire layout (fuse.h): in header 40 bytes, fuse_read_in/fuse_write_in 40, out header 16. */
#define REQ_HEAD 80
#define WRITE_OUT 8
#define FUSE_READ 15
#define FUSE_WRITE 16
#define FUSE_WRITE_KILL_SUIDGID (1u << 2)
#define LOOKUP_REQ_MAX (IN_HEADER + NAME_MAX_BYTES + 1)
#define COPY_MAX LOOKUP_REQ_MAX /* the most bytes iov_copy moves (≥ REQ_HEAD, GETATTR_REPLY, an entry reply) */

/* Count words (virtqueue.ts FAST_COUNTS), and the stall's. */
#define COUNT_READS 0
#define COUNT_WRITES 1
#define COUNT_READ_BYTES 2
#define COUNT_GETATTRS 3
#define COUNT_LOOKUPS 4
#define COUNT_WORDS 5
#define STALL_FH 0
#define STALL_MS 1
#define STALL_WORDS 2

/*
 * A write at once slower than this (file-io.ts's STALL_MS) waited for something, if the
 * thread slept in it; one that was only preempted (a busy machine) did not.
 */
#define STALL_NS 1000000
/* Chains taken after this long go to the next call (ring-runner.ts's NOTIFY_WITHIN_MS). */
#define BATCH_NS 10000

struct region {
  uint64_t gpa;
  uint64_t size;
  uint8_t *host;
};

struct ring_fast {
  uint8_t *desc;
  volatile uint16_t *avail; /* flags, idx, ring[num], used_event */
  volatile uint16_t *used16; /* flags, idx */
  volatile uint32_t *used_ring; /* [id, len] * num */
  uint32_t num;
  bool indirect;
  struct region regions[MAX_REGIONS];
  uint32_t nregions;
  int32_t *handles;
  int32_t *inodes; /* NULL: none published */
  int32_t *names;  /* SharedNames; NULL: LOOKUPs are the session's */
  double *names_lookups;
  struct lookup_gate gate;
  double *counts;
  double *stall;
  napi_ref refs[MAX_REGIONS + 7];
  uint32_t nrefs;
};

struct desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};

static void read_desc(const uint8_t *table, uint32_t i, struct desc *d) {
  /* One copy of the 16 bytes: the guest may rewrite the table meanwhile. */
  memcpy(d, (const void *)(table + 16 * (size_t)i), sizeof *d);
}

/* Host address of guest-physical [gpa, gpa + len), wholly inside one region; NULL if not. */
static uint8_t *guest_ptr(const struct ring_fast *r, uint64_t gpa, uint64_t len) {
  for (uint32_t i = 0; i < r->nregions; i++) {
    const struct region *g = &r->regions[i];
    if (gpa >= g->gpa && len <= g->size && gpa - g->gpa <= g->size - len) return g->host + (gpa - g->gpa);
  }
  return NULL;
}

struct chain {
  struct iovec rd[MAX_IOV];
  struct iovec wr[MAX_IOV];
  uint32_t nrd, nwr;
  uint64_t rd_bytes, wr_bytes;
};

/* Walks the chain at `head` as virtqueue.ts does; false for anything it would refuse. */
static bool walk(const struct ring_fast *r, uint32_t head, struct chain *c) {
  const uint8_t *table = r->desc;
  uint32_t size = r->num, i = head;
  bool in_indirect = false;
  uint64_t total = 0;
  c->nrd = c->nwr = 0;
  c->rd_bytes = c->wr_bytes = 0;
  for (uint32_t steps = 0;; steps++) {
    if (steps >= size || i >= size) return false;
    struct desc d;
    read_desc(table, i, &d);
    if (d.flags & DESC_F_INDIRECT) {
      if (!r->indirect || in_indirect || (d.flags & DESC_F_NEXT) || d.len == 0 || d.len % 16) return false;
      const uint8_t *t = guest_ptr(r, d.addr, d.len);
      if (!t) return false;
      table = t;
      size = d.len / 16;
      in_indirect = true;
      i = 0;
      steps = (uint32_t)-1;
      continue;
    }
    total += d.len;
    if (total > MAX_CHAIN_BYTES) return false;
    uint8_t *p = guest_ptr(r, d.addr, d.len);
    if (!p) return false;
    if (d.flags & DESC_F_WRITE) {
      if (c->nwr == MAX_IOV) return false;
      c->wr[c->nwr++] = (struct iovec){p, d.len};
      c->wr_bytes += d.len;
    } else {
      if (c->nwr || c->nrd == MAX_IOV) return false;
      c->rd[c->nrd++] = (struct iovec){p, d.len};
      c->rd_bytes += d.len;
    }
    if (!(d.flags & DESC_F_NEXT)) return true;
    i = d.next;
  }
}

/*
 * Whether the chain at `head` may be a READ, WRITE or GETATTR, from a glance at its first
 * descriptor: most other requests are then declined without a walk. Only a shortcut: serve() decides on
 * its own copy of the head.
 */
static bool maybe_io(const struct ring_fast *r, uint32_t head) {
  struct desc d;
  read_desc(r->desc, head, &d);
  if (d.flags & DESC_F_INDIRECT) {
    const uint8_t *t = d.len >= 16 ? guest_ptr(r, d.addr, 16) : NULL;
    if (!t) return true; /* the walk says what is wrong with it */
    read_desc(t, 0, &d);
  }
  const uint8_t *p = !(d.flags & (DESC_F_WRITE | DESC_F_INDIRECT)) && d.len >= 8 ? guest_ptr(r, d.addr, 8) : NULL;
  if (!p) return true;
  uint32_t op;
  memcpy(&op, p + 4, 4);
  return op == FUSE_READ || op == FUSE_WRITE || op == FUSE_GETATTR || (op == FUSE_LOOKUP && r->names);
}

/* Fills `out` with the part [skip, skip + len) of `iov`; returns how many entries. */
static uint32_t iov_range(const struct iovec *iov, uint32_t n, uint64_t skip, uint64_t len, struct iovec *out) {
  uint32_t m = 0;
  for (uint32_t i = 0; i < n && len; i++) {
    if (skip >= iov[i].iov_len) {
      skip -= iov[i].iov_len;
      continue;
    }
    size_t k = iov[i].iov_len - skip;
    if (k > len) k = len;
    if (k) out[m++] = (struct iovec){(uint8_t *)iov[i].iov_base + skip, k};
    len -= k;
    skip = 0;
  }
  return m;
}

/*
 * Copies `len` bytes (at most COPY_MAX: a request head or a reply's fixed part) between a
 * flat buffer and an iovec list starting `skip` bytes in.
 */
static void iov_copy(const struct iovec *iov, uint32_t n, uint64_t skip, uint8_t *flat, uint64_t len, bool to_iov) {
  struct iovec part[COPY_MAX]; /* each part holds at least a byte */
  uint32_t m = iov_range(iov, n, skip, len < COPY_MAX ? len : COPY_MAX, part);
  for (uint32_t i = 0; i < m; i++) {
    if (to_iov) memcpy(part[i].iov_base, flat, part[i].iov_len);
    else memcpy(flat, part[i].iov_base, part[i].iov_len);
    flat += part[i].iov_len;
  }
}

/* Times the calling thread gave up the CPU itself (slept): the sign that a call waited. */
static long voluntary_switches(void) {
  struct rusage ru;
  return getrusage(RUSAGE_THREAD, &ru) == 0 ? ru.ru_nvcsw : 0;
}

napi_value js_thread_voluntary_switches(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value v;
  napi_create_double(env, (double)voluntary_switches(), &v);
  return v;
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/*
 * Reads from the page cache only; a short count is the end of the file or the cached part:
 * the next try from there tells which (as page-cache.ts does). -1: not at once.
 */
static int64_t read_cached(int fd, struct iovec *iov, uint32_t n, uint64_t size, off_t off) {
  uint64_t done = 0;
  struct iovec rest[MAX_IOV];
  while (done < size) {
    uint32_t m = iov_range(iov, n, done, size - done, rest);
    ssize_t k = preadv2(fd, rest, (int)m, off + (off_t)done, RWF_NOWAIT);
    if (k < 0) return -1;
    if (k == 0) break;
    done += (uint64_t)k;
  }
  return (int64_t)done;
}

enum outcome { DECLINED, SERVED, SERVED_STALLED };

/* The reply header, and what follows it in `out`, into the chain's writable buffers. */
static void reply(struct chain *c, const uint8_t *head, uint8_t *out, uint32_t body, uint32_t total) {
  out_header(out, total, 0, head);
  iov_copy(c->wr, c->nwr, 0, out, OUT_HEADER + body, true);
}

/* GETATTR of an inode or open file the backend published (see published_getattr). */
static enum outcome serve_getattr(struct ring_fast *r, struct chain *c, const uint8_t *head, uint32_t *written) {
  if (u32_at(head, 0) != GETATTR_REQ || c->rd_bytes != GETATTR_REQ || c->wr_bytes < GETATTR_REPLY) return DECLINED;
  uint8_t out[GETATTR_REPLY];
  if (!published_getattr(r->handles, r->inodes, head, out)) return DECLINED;
  iov_copy(c->wr, c->nwr, 0, out, GETATTR_REPLY, true);
  r->counts[COUNT_GETATTRS] += 1;
  *written = GETATTR_REPLY;
  return SERVED;
}

/*
 * LOOKUP in a directory the backend published as held in memory (see published_lookup).
 * Only on the thread that runs the backend (the event loop: no queue threads), which takes
 * the per-slot counts between requests: the context has `names` only there. Guests mount
 * virtio-fs with default_permissions, so their kernel has checked the caller.
 */
static enum outcome serve_lookup(struct ring_fast *r, struct chain *c, uint32_t len, uint32_t *written) {
  if (!r->names || len != c->rd_bytes || len > LOOKUP_REQ_MAX || c->wr_bytes < OUT_HEADER + ENTRY_OUT) return DECLINED;
  if (!lookup_gate_open(&r->gate)) return DECLINED;
  uint8_t req[LOOKUP_REQ_MAX], out[OUT_HEADER + ENTRY_OUT];
  iov_copy(c->rd, c->nrd, 0, req, len, false);
  uint32_t n = 0;
  enum lookup_outcome o = published_lookup(r->inodes, r->names, r->names_lookups, req, len, out, &n);
  lookup_gate_saw(&r->gate, o);
  if (o != LOOKUP_ANSWERED) return DECLINED;
  iov_copy(c->wr, c->nwr, 0, out, n, true);
  r->counts[COUNT_LOOKUPS] += 1;
  *written = n;
  return SERVED;
}

/* Serves one chain if it is a plain READ, WRITE or GETATTR the backend published, or a LOOKUP it can answer. */
/* `slept`: the thread's voluntary switches before the call's first write at once (-1: none yet). */
static enum outcome serve(struct ring_fast *r, struct chain *c, uint32_t write_at_once_max, long *slept, uint32_t *written) {
  uint8_t head[REQ_HEAD];
  if (c->rd_bytes < IN_HEADER) return DECLINED;
  iov_copy(c->rd, c->nrd, 0, head, c->rd_bytes < REQ_HEAD ? c->rd_bytes : REQ_HEAD, false);
  uint32_t len = u32_at(head, 0), op = u32_at(head, 4);
  if (head[36] | head[37]) return DECLINED; /* extensions: the session's business */
  if (op == FUSE_GETATTR) return serve_getattr(r, c, head, written);
  if (op == FUSE_LOOKUP) return serve_lookup(r, c, len, written);
  if ((op != FUSE_READ && op != FUSE_WRITE) || c->rd_bytes < REQ_HEAD) return DECLINED;
  uint64_t fh = u64_at(head, 40), offset = u64_at(head, 48);
  uint32_t size = u32_at(head, 56), flags_in = u32_at(head, 60);
  /* At or past 2^53 the backend answers (what it can name in a JavaScript number ends there). */
  if (offset >= (1ull << 53)) return DECLINED;
  bool write = op == FUSE_WRITE;
  if (write ? (len != REQ_HEAD + (uint64_t)size || c->rd_bytes != len || c->wr_bytes < OUT_HEADER + WRITE_OUT || (flags_in & FUSE_WRITE_KILL_SUIDGID))
            : (len != REQ_HEAD || c->rd_bytes != REQ_HEAD || c->wr_bytes < OUT_HEADER + (uint64_t)size))
    return DECLINED;

  int32_t *s = sh_enter(r->handles, fh);
  int64_t n = -1;
  bool stalled = false;
  if (s) {
    int fd = s[SH_FD], flags = s[SH_FLAGS];
    struct iovec io[MAX_IOV];
    if (write && (flags & SH_WRITE)) {
      uint32_t m = iov_range(c->rd, c->nrd, REQ_HEAD, size, io);
      if (size == 0) n = 0;
      else if ((flags & SH_WRITE_AT_ONCE) && size <= write_at_once_max) {
        if (*slept < 0) *slept = voluntary_switches(); /* once per call: the thread sleeps only in here */
        uint64_t t0 = now_ns();
        n = pwritev(fd, io, (int)m, (off_t)offset);
        uint64_t took = now_ns() - t0;
        if (took > STALL_NS) {
          long now = voluntary_switches();
          if (now > *slept) {
            stalled = true;
            r->stall[STALL_FH] = (double)fh;
            r->stall[STALL_MS] = (double)took / 1e6;
          }
          *slept = now;
        }
      } else n = pwritev2(fd, io, (int)m, (off_t)offset, RWF_NOWAIT);
      if (n != (int64_t)size) n = -1; /* refused, an error, or short: the session answers */
    } else if (!write && (flags & SH_READ)) {
      uint32_t m = iov_range(c->wr, c->nwr, OUT_HEADER, size, io);
      if (size == 0) n = 0;
      else if (flags & SH_READ_AT_ONCE) {
        n = preadv(fd, io, (int)m, (off_t)offset);
        if (n < 0) n = -1;
      } else n = read_cached(fd, io, m, size, (off_t)offset);
    }
    sh_leave(s);
  }
  if (n < 0) return DECLINED; /* positional: the session doing it again is harmless */

  uint8_t out[OUT_HEADER + WRITE_OUT];
  uint32_t total = write ? OUT_HEADER + WRITE_OUT : OUT_HEADER + (uint32_t)n;
  if (write) {
    uint32_t wrote = (uint32_t)n, pad = 0;
    memcpy(out + 16, &wrote, 4);
    memcpy(out + 20, &pad, 4);
  }
  reply(c, head, out, write ? WRITE_OUT : 0, total);
  r->counts[write ? COUNT_WRITES : COUNT_READS] += 1;
  if (!write) r->counts[COUNT_READ_BYTES] += (double)n;
  *written = total;
  return stalled ? SERVED_STALLED : SERVED;
}

static void finalize(napi_env env, void *data, void *hint) {
  (void)hint;
  struct ring_fast *r = data;
  for (uint32_t i = 0; i < r->nrefs; i++) napi_delete_reference(env, r->refs[i]);
  free(r);
}

/* The data and length of a typed array argument, kept alive by a reference from `r`. */
static bool hold_array(napi_env env, struct ring_fast *r, napi_value v, void **data, size_t *bytes) {
  bool is;
  napi_typedarray_type type;
  size_t length, offset;
  napi_value ab;
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is) return false;
  if (napi_get_typedarray_info(env, v, &type, &length, data, &ab, &offset) != napi_ok) return false;
  size_t unit = type == napi_int32_array ? 4 : type == napi_float64_array ? 8 : type == napi_uint8_array ? 1 : 0;
  if (!unit || r->nrefs == sizeof r->refs / sizeof r->refs[0]) return false;
  *bytes = length * unit;
  return napi_create_reference(env, v, 1, &r->refs[r->nrefs++]) == napi_ok;
}

napi_value js_ring_fast_create(napi_env env, napi_callback_info info) {
  size_t argc = 12;
  napi_value argv[12];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 10) return throw_errno(env, EINVAL, "ringFastCreate");
  struct ring_fast *r = calloc(1, sizeof *r);
  if (!r) return throw_errno(env, ENOMEM, "ringFastCreate");
  void *p[9] = {0};
  size_t b[9] = {0};
  napi_valuetype inodes_type, names_type = napi_null;
  uint32_t num = 0, nreg = 0;
  bool ok = napi_get_value_uint32(env, argv[3], &num) == napi_ok && num > 0 && num <= 32768 && (num & (num - 1)) == 0 &&
            napi_get_value_bool(env, argv[4], &r->indirect) == napi_ok && hold_array(env, r, argv[0], &p[0], &b[0]) &&
            hold_array(env, r, argv[1], &p[1], &b[1]) && hold_array(env, r, argv[2], &p[2], &b[2]) &&
            hold_array(env, r, argv[6], &p[3], &b[3]) && hold_array(env, r, argv[8], &p[4], &b[4]) &&
            hold_array(env, r, argv[9], &p[6], &b[6]) && b[6] >= STALL_WORDS * 8 &&
            napi_typeof(env, argv[7], &inodes_type) == napi_ok &&
            (inodes_type == napi_null || (hold_array(env, r, argv[7], &p[5], &b[5]) && b[5] >= SH_TABLE_BYTES)) &&
            b[0] >= 16 * (size_t)num && b[1] >= 6 + 2 * (size_t)num && b[2] >= 6 + 8 * (size_t)num &&
            b[3] >= SH_TABLE_BYTES && b[4] >= COUNT_WORDS * 8 && (uintptr_t)p[1] % 2 == 0 && (uintptr_t)p[2] % 4 == 0 &&
            napi_get_array_length(env, argv[5], &nreg) == napi_ok && nreg % 2 == 0 && nreg / 2 <= MAX_REGIONS &&
            (argc < 12 || napi_typeof(env, argv[10], &names_type) == napi_ok) &&
            (names_type == napi_null || (p[5] && hold_array(env, r, argv[10], &p[7], &b[7]) && b[7] >= SH_TABLE_BYTES &&
                                         hold_array(env, r, argv[11], &p[8], &b[8]) && b[8] >= SH_SLOTS * 8));
  for (uint32_t i = 0; ok && i < nreg; i += 2) {
    napi_value gpa, bytes;
    double g;
    void *host;
    size_t size;
    ok = napi_get_element(env, argv[5], i, &gpa) == napi_ok && napi_get_value_double(env, gpa, &g) == napi_ok && g >= 0 && g < 9007199254740992.0 &&
         napi_get_element(env, argv[5], i + 1, &bytes) == napi_ok && hold_array(env, r, bytes, &host, &size);
    if (ok) r->regions[r->nregions++] = (struct region){(uint64_t)g, size, host};
  }
  if (!ok) {
    finalize(env, r, NULL);
    return throw_errno(env, EINVAL, "ringFastCreate");
  }
  r->desc = p[0];
  r->avail = p[1];
  r->used16 = p[2];
  r->used_ring = (volatile uint32_t *)((uint8_t *)p[2] + 4);
  r->num = num;
  r->handles = p[3];
  r->counts = p[4];
  r->stall = p[6];
  r->inodes = p[5];
  r->names = p[7];
  r->names_lookups = p[8];
  napi_value ext;
  if (napi_create_external(env, r, finalize, NULL, &ext) != napi_ok) {
    finalize(env, r, NULL);
    return throw_errno(env, ENOMEM, "ringFastCreate");
  }
  return ext;
}

napi_value js_ring_fast_serve(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  struct ring_fast *r;
  uint32_t last_avail, used_idx, max, write_at_once_max;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 5) return throw_errno(env, EINVAL, "ringFastServe");
  CHECK(napi_get_value_external(env, argv[0], (void **)&r));
  CHECK(napi_get_value_uint32(env, argv[1], &last_avail));
  CHECK(napi_get_value_uint32(env, argv[2], &used_idx));
  CHECK(napi_get_value_uint32(env, argv[3], &max));
  CHECK(napi_get_value_uint32(env, argv[4], &write_at_once_max));
  static __thread struct chain c; /* 32 KiB: off the stack */
  uint32_t served = 0;
  long slept = -1;
  uint64_t t0 = now_ns();
  while (served < max && (served == 0 || now_ns() - t0 < BATCH_NS)) {
    uint16_t avail_idx = __atomic_load_n(&r->avail[1], __ATOMIC_ACQUIRE);
    uint16_t next = (uint16_t)(last_avail + served);
    uint16_t pending = (uint16_t)(avail_idx - next);
    if (pending == 0 || pending > r->num) break; /* empty, or broken: the JavaScript ring says so */
    uint16_t head = __atomic_load_n(&r->avail[2 + next % r->num], __ATOMIC_RELAXED);
    if (head >= r->num || !maybe_io(r, head) || !walk(r, head, &c)) break;
    uint32_t written = 0;
    enum outcome o = serve(r, &c, write_at_once_max, &slept, &written);
    if (o == DECLINED) break;
    uint32_t slot = (uint16_t)(used_idx + served) % r->num;
    r->used_ring[2 * slot] = head;
    r->used_ring[2 * slot + 1] = written;
    served++;
    /* Publishes the element above (the release orders it first). */
    __atomic_store_n(&r->used16[1], (uint16_t)(used_idx + served), __ATOMIC_RELEASE);
    if (o == SERVED_STALLED) break;
  }
  return int32_value(env, (int32_t)served);
}
