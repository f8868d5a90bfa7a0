/*
 * Kernel FUSE passthrough (Linux 6.9+): registers an open file as the backing file of a
 * FUSE open, so the kernel serves its reads and writes without the daemon.
 *   backingOpen(devFd, fd) -> backing id      FUSE_DEV_IOC_BACKING_OPEN
 *   backingClose(devFd, id)                   FUSE_DEV_IOC_BACKING_CLOSE
 * and the device's own reads and writes (see below).
 */
#include "published.h"

#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

struct fuse_backing_map {
  int32_t fd;
  uint32_t flags;
  uint64_t padding;
};

#define FUSE_DEV_IOC_MAGIC 229
#define FUSE_DEV_IOC_BACKING_OPEN _IOW(FUSE_DEV_IOC_MAGIC, 1, struct fuse_backing_map)
#define FUSE_DEV_IOC_BACKING_CLOSE _IOW(FUSE_DEV_IOC_MAGIC, 2, uint32_t)

napi_value js_backing_open(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int32_t dev, fd;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_int32(env, argv[0], &dev));
  CHECK(napi_get_value_int32(env, argv[1], &fd));
  struct fuse_backing_map map = {.fd = fd, .flags = 0, .padding = 0};
  int id = ioctl(dev, FUSE_DEV_IOC_BACKING_OPEN, &map);
  if (id < 0) return throw_errno(env, errno, "FUSE_DEV_IOC_BACKING_OPEN");
  return int32_value(env, id);
}

napi_value js_backing_close(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int32_t dev;
  uint32_t id;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_int32(env, argv[0], &dev));
  CHECK(napi_get_value_uint32(env, argv[1], &id));
  if (ioctl(dev, FUSE_DEV_IOC_BACKING_CLOSE, &id) < 0) return throw_errno(env, errno, "FUSE_DEV_IOC_BACKING_CLOSE");
  return NULL;
}

/*
 * The request and reply path of /dev/fuse, one call each (Node's fs calls cost more than
 * the system call for messages this small):
 *   devRead(devFd, scratch, fast?) -> bytes of the request read into scratch; 0 at end of
 *     file, -errno on failure (EAGAIN: nothing queued). The caller copies what it keeps: in
 *     JS a small copy comes from Node's buffer pool, where a native copy would be a malloc
 *     and a backing store for the collector to sweep, per request. With `fast` (from
 *     devFastCreate), a GETATTR of an inode or open file the backend published, a LOOKUP
 *     in a directory it published of a name that is absent or leads to an inode it
 *     published, or a root caller's UNLINK or RMDIR in a directory published for that, is
 *     answered here (published.h) and the next request read, up to FAST_MAX of them, so
 *     the session sees only the others.
 *   devFastCreate(inodes, handles, counts, lookups, names, namesLookups) -> context: the
 *     backend's SharedHandles tables by node id and by file handle (either may be null), a
 *     Float64Array counting the GETATTRs (word 0), LOOKUPs (1), UNLINKs (2) and RMDIRs (3)
 *     answered here,
 *     whether LOOKUPs may be answered here (only where the kernel checks permissions
 *     itself: see published_lookup), and its SharedNames table and per-slot lookup counts
 *     (both null, or neither). The arrays are referenced by the context.
 *   devWritev(devFd, chunks) -> bytes written; throws on failure (code: the errno name).
 */
#define FAST_MAX 64
#define FAST_GETATTRS 0
#define FAST_LOOKUPS 1
#define FAST_UNLINKS 2
#define FAST_RMDIRS 3

struct dev_fast {
  int32_t *inodes, *handles, *names;
  double *counts, *names_lookups;
  bool lookups;
  struct lookup_gate gate;
  napi_ref refs[5];
};

static void dev_fast_finalize(napi_env env, void *data, void *hint) {
  (void)hint;
  struct dev_fast *f = data;
  for (int i = 0; i < 5; i++)
    if (f->refs[i]) napi_delete_reference(env, f->refs[i]);
  free(f);
}

/* A typed array argument of at least `bytes` (null allowed where `nullable`), referenced by f. */
static bool fast_array(napi_env env, struct dev_fast *f, int i, napi_value v, size_t bytes, bool nullable, void **data) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok) return false;
  if (t == napi_null) return nullable;
  bool is;
  napi_typedarray_type type;
  size_t length, offset;
  napi_value ab;
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is || napi_get_typedarray_info(env, v, &type, &length, data, &ab, &offset) != napi_ok) return false;
  size_t unit = type == napi_int32_array ? 4 : type == napi_float64_array ? 8 : 0;
  return unit && length * unit >= bytes && napi_create_reference(env, v, 1, &f->refs[i]) == napi_ok;
}

napi_value js_dev_fast_create(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  struct dev_fast *f = calloc(1, sizeof *f);
  if (!f) return throw_errno(env, ENOMEM, "devFastCreate");
  void *p[5] = {0};
  napi_valuetype names_type = napi_null;
  bool ok = argc == 6 && fast_array(env, f, 0, argv[0], SH_TABLE_BYTES, true, &p[0]) && fast_array(env, f, 1, argv[1], SH_TABLE_BYTES, true, &p[1]) &&
            fast_array(env, f, 2, argv[2], 32, false, &p[2]) && napi_get_value_bool(env, argv[3], &f->lookups) == napi_ok &&
            fast_array(env, f, 3, argv[4], SH_TABLE_BYTES, true, &p[3]) && napi_typeof(env, argv[4], &names_type) == napi_ok &&
            fast_array(env, f, 4, argv[5], (size_t)SH_SLOTS * 8, names_type == napi_null, &p[4]);
  napi_value ext;
  if (!ok || napi_create_external(env, f, dev_fast_finalize, NULL, &ext) != napi_ok) {
    dev_fast_finalize(env, f, NULL);
    return throw_errno(env, EINVAL, "devFastCreate");
  }
  f->inodes = p[0];
  f->handles = p[1];
  f->counts = p[2];
  f->names = p[3];
  f->names_lookups = p[4];
  if (!f->names_lookups) f->names = NULL;
  return ext;
}

/*
 * Answers `req` (n bytes) here if it is a plain GETATTR the backend published, or (where
 * `lookups`) a LOOKUP that published_lookup can answer.
 */
static bool dev_fast_serve(int fd, struct dev_fast *f, const uint8_t *req, ssize_t n) {
  if (n < IN_HEADER || u32_at(req, 0) != (uint32_t)n || req[36] || req[37]) return false;
  uint32_t op = u32_at(req, 4), len;
  uint8_t out[OUT_HEADER + ENTRY_OUT]; /* ≥ GETATTR_REPLY */
  if (op == FUSE_GETATTR) {
    if (n != GETATTR_REQ || !published_getattr(f->handles, f->inodes, req, out)) return false;
    len = GETATTR_REPLY;
    f->counts[FAST_GETATTRS] += 1;
  } else if (op == FUSE_LOOKUP) {
    if (!f->lookups || !lookup_gate_open(&f->gate)) return false;
    enum lookup_outcome o = published_lookup(f->inodes, f->names, f->names_lookups, req, (size_t)n, out, &len);
    lookup_gate_saw(&f->gate, o);
    if (o != LOOKUP_ANSWERED) return false;
    f->counts[FAST_LOOKUPS] += 1;
  } else if (op == FUSE_UNLINK || op == FUSE_RMDIR) {
    if (!published_unlink(f->inodes, req, (size_t)n, op == FUSE_RMDIR, out)) return false;
    len = OUT_HEADER;
    f->counts[op == FUSE_UNLINK ? FAST_UNLINKS : FAST_RMDIRS] += 1;
  } else {
    return false;
  }
  /* A failed write is a request the kernel dropped meanwhile (interrupted): nothing to do. */
  (void)!write(fd, out, len);
  return true;
}

napi_value js_dev_read(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  int32_t fd;
  void *data;
  size_t len;
  struct dev_fast *f = NULL;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_int32(env, argv[0], &fd));
  CHECK(napi_get_buffer_info(env, argv[1], &data, &len));
  if (argc > 2) {
    napi_valuetype t;
    CHECK(napi_typeof(env, argv[2], &t));
    if (t == napi_external) CHECK(napi_get_value_external(env, argv[2], (void **)&f));
  }
  for (int served = 0;; served++) {
    ssize_t n = read(fd, data, len);
    if (n < 0) return int32_value(env, -errno);
    if (!f || served == FAST_MAX || !dev_fast_serve(fd, f, data, n)) return int32_value(env, (int32_t)n);
  }
}

#define DEV_IOV_MAX 64

napi_value js_dev_writev(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int32_t fd;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_int32(env, argv[0], &fd));
  struct iovec iov[DEV_IOV_MAX];
  uint32_t n = get_iovecs(env, argv[1], iov, DEV_IOV_MAX);
  if (n == 0) return throw_errno(env, EINVAL, "writev");
  ssize_t w = writev(fd, iov, (int)n);
  if (w < 0) return throw_errno(env, errno, "writev");
  napi_value out;
  napi_create_double(env, (double)w, &out);
  return out;
}
