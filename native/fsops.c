/*
 * File-system system calls that Node lacks (*at calls, file handles, getdents, xattrs by
 * fd path, fallocate, SEEK_DATA/HOLE, copy_file_range, syncfs), run on libuv's thread
 * pool so the event loop never blocks.
 *
 * Each call may carry credentials [uid, gid, groups...]: the pool thread switches its own
 * fsuid, fsgid and supplementary groups (raw syscalls, which act on the calling thread
 * only, unlike glibc's process-wide wrappers) for the duration of the call, so the host
 * kernel checks permissions and assigns ownership exactly as for that user. A thread
 * whose fsuid is not 0 also loses CAP_DAC_OVERRIDE & co., as the kernel defines.
 *
 * JS: fsop(op, creds | null, a0..a5 (numbers), s1, s2 (strings | null), buf | null) -> Promise<number>
 * Output structs (statx, statfs, handles, dirents, xattr values) are written into `buf`.
 *
 * fsopNow(...same arguments) -> number (>= 0) or -errno runs on the calling thread, for
 * calls that cannot wait for I/O: OP_LOOKUP_LOCAL (from the dentry cache on a local file
 * system, or on one held wholly in memory), OP_STATX of an open local inode, and on file
 * systems held in memory (tmpfs, ramfs: the caller knows) the metadata calls, which there
 * never wait for a device. Calls that move file data (or may, like fallocate and
 * copy_file_range) and syncs are refused: they always take the pool.
 */
#include "common.h"

#include <stddef.h>

#include <fcntl.h>
#include <linux/fs.h>
#include <sched.h>
#include <linux/openat2.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <unistd.h>

enum {
  OP_OPENAT = 1,
  OP_MKDIRAT,
  OP_MKNODAT,
  OP_SYMLINKAT,
  OP_LINKAT,
  OP_UNLINKAT,
  OP_RENAMEAT2,
  OP_FCHMODAT,
  OP_FCHOWNAT,
  OP_UTIMENSAT,
  OP_STATX,
  OP_READLINKAT,
  OP_NAME_TO_HANDLE_AT,
  OP_OPEN_BY_HANDLE_AT,
  OP_GETDENTS,
  OP_SETXATTR,
  OP_GETXATTR,
  OP_LISTXATTR,
  OP_REMOVEXATTR,
  OP_FALLOCATE,
  OP_LSEEK,
  OP_COPY_FILE_RANGE,
  OP_FSTATFS,
  OP_SYNCFS,
  OP_FTRUNCATE,
  OP_TRUNCATE,
  OP_PWRITE,
  OP_CLOSE,
  OP_FACCESSAT,
  OP_LOOKUP,
  OP_LOOKUP_LOCAL,
  OP_CREATE,
  OP_MAX
};

static const char *op_names[OP_MAX] = {
    "?",        "openat",    "mkdirat",   "mknodat",  "symlinkat",       "linkat",           "unlinkat",
    "renameat2", "fchmodat", "fchownat",  "utimensat", "statx",          "readlinkat",       "name_to_handle_at",
    "open_by_handle_at", "getdents64", "setxattr", "getxattr", "listxattr", "removexattr", "fallocate",
    "lseek",    "copy_file_range", "fstatfs", "syncfs", "ftruncate", "truncate",
    "pwrite",   "close",     "faccessat", "lookup", "lookup", "openat",
};

#define MAX_GROUPS 64

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  int op;
  int has_creds;
  uid_t uid;
  gid_t gid;
  int ngroups;
  gid_t groups[MAX_GROUPS];
  int64_t a[6];
  char *s1, *s2;
  void *buf;
  size_t buflen;
  napi_ref bufref;
  int64_t ret;
  int err;
} fsop_t;

static gid_t saved_groups[MAX_GROUPS];
static int saved_ngroups;
static uid_t saved_uid;
static gid_t saved_gid;

/* DPFS_NO_OPENAT2=1 (tests): answer openat2 with ENOSYS, as kernels before 5.6 do. */
static int no_openat2;

static int openat2_call(int dirfd, const char *name, struct open_how *how) {
  if (no_openat2) return errno = ENOSYS, -1;
  return (int)syscall(SYS_openat2, dirfd, name, how, sizeof *how);
}

void fsop_module_init(void) {
  const char *e = getenv("DPFS_NO_OPENAT2");
  no_openat2 = e && *e && strcmp(e, "0") != 0;
  int n = getgroups(MAX_GROUPS, saved_groups);
  saved_ngroups = n < 0 ? 0 : n;
  saved_uid = geteuid();
  saved_gid = getegid();
}

static int has_group(const gid_t *groups, int n, gid_t g) {
  for (int i = 0; i < n; i++)
    if (groups[i] == g) return 1;
  return 0;
}

/*
 * Credentials the daemon has already need no switch (requests from root, mostly): the same
 * fsuid and fsgid and the same group membership ({fsgid} and the supplementary groups, which
 * is all the kernel consults).
 */
static int are_ours(const fsop_t *r) {
  if (r->uid != saved_uid || r->gid != saved_gid) return 0;
  for (int i = 0; i < r->ngroups; i++)
    if (r->groups[i] != saved_gid && !has_group(saved_groups, saved_ngroups, r->groups[i])) return 0;
  for (int i = 0; i < saved_ngroups; i++)
    if (saved_groups[i] != r->gid && !has_group(r->groups, r->ngroups, saved_groups[i])) return 0;
  return 1;
}

static int become(fsop_t *r) {
  if (syscall(SYS_setgroups, r->ngroups, r->groups) != 0) return -1;
  setfsgid(r->gid);
  if ((gid_t)setfsgid((gid_t)-1) != r->gid) return errno = EPERM, -1;
  setfsuid(r->uid);
  if ((uid_t)setfsuid((uid_t)-1) != r->uid) return errno = EPERM, -1;
  return 0;
}

/* What fsopNow may run (see the top): everything but data, syncs and a lookup that may cross mounts. */
static int may_run_now(int op) {
  switch (op) {
    case OP_FALLOCATE:
    case OP_COPY_FILE_RANGE:
    case OP_SYNCFS:
    case OP_PWRITE:
    case OP_LOOKUP:
      return 0;
    default:
      return 1;
  }
}

static void restore(void) {
  setfsuid(0);
  setfsgid(0);
  syscall(SYS_setgroups, saved_ngroups, saved_groups);
}

/* Closes fd after a failed step, keeping that step's errno; returns -1. */
static int64_t fail_closing(int fd) {
  int e = errno;
  close(fd);
  return errno = e, -1;
}

/*
 * Fills buf for a lookup of `fd` (see OP_LOOKUP) and returns fd, or closes it and fails.
 * same_dev: the entry must be on device major:minor, else EAGAIN (see OP_LOOKUP_LOCAL);
 * its attributes are then taken as cached (nothing to synchronise on a local file system).
 * Without want_handle the mount id is left -2 (not asked): the caller knows the inode.
 */
static int64_t describe(fsop_t *r, int fd, int same_dev, uint32_t major, uint32_t minor, int want_handle) {
  struct statx *st = r->buf;
  int flags = AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW | (same_dev ? AT_STATX_DONT_SYNC : 0);
  if (statx(fd, "", flags, STATX_BASIC_STATS | STATX_BTIME, st) != 0) goto fail;
  if (same_dev && (st->stx_dev_major != major || st->stx_dev_minor != minor)) {
    errno = EAGAIN;
    goto fail;
  }
  struct file_handle *fh = (struct file_handle *)((char *)r->buf + 260);
  size_t room = r->buflen - 260 - sizeof(struct file_handle);
  fh->handle_bytes = (unsigned)(room < MAX_HANDLE_SZ ? room : MAX_HANDLE_SZ); /* OP_CREATE's fds follow */
  int mount_id = -2;
  if (want_handle && name_to_handle_at(fd, "", fh, &mount_id, AT_EMPTY_PATH) != 0) mount_id = -1;
  memcpy((char *)r->buf + 256, &mount_id, 4);
  return fd;
fail:
  return fail_closing(fd);
}

/*
 * An open that must not wait, on this thread: O_NONBLOCK so that a lease another process
 * holds on the file is not waited for (EAGAIN, as is anything refused: the pool then opens
 * it as asked), and with `by_name` never across a mount (a name may lead to another file
 * system; a /proc/self/fd reopen of an inode we hold may not, it leads to that inode).
 * O_NONBLOCK is cleared again unless the caller asked for it.
 */
static int open_now(int dirfd, const char *name, int flags, mode_t mode, int by_name) {
  struct open_how how = {
      .flags = (uint64_t)(flags | O_NONBLOCK | O_CLOEXEC),
      .mode = flags & (O_CREAT | __O_TMPFILE) ? mode : 0,
      .resolve = RESOLVE_NO_XDEV,
  };
  int fd = by_name ? openat2_call(dirfd, name, &how) : openat(dirfd, name, (int)how.flags, mode);
  if (fd < 0) {
    if (errno == EINVAL || errno == ENOSYS || errno == E2BIG || errno == EXDEV || errno == EWOULDBLOCK) errno = EAGAIN;
    return -1;
  }
  if (!(flags & O_NONBLOCK) && fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) return (int)fail_closing(fd);
  return fd;
}

static int64_t run(fsop_t *r) {
  int64_t *a = r->a;
  switch (r->op) {
    case OP_OPENAT:
      if (a[3]) return open_now((int)a[0], r->s1, (int)a[1], (mode_t)a[2], 0);
      return openat((int)a[0], r->s1, (int)a[1], (mode_t)a[2]);
    case OP_MKDIRAT:
      return mkdirat((int)a[0], r->s1, (mode_t)a[1]);
    case OP_MKNODAT:
      return mknodat((int)a[0], r->s1, (mode_t)a[1], (dev_t)a[2]);
    case OP_SYMLINKAT:
      return symlinkat(r->s2, (int)a[0], r->s1);
    case OP_LINKAT:
      return linkat((int)a[0], r->s1, (int)a[1], r->s2, (int)a[2]);
    case OP_UNLINKAT:
      return unlinkat((int)a[0], r->s1, (int)a[1]);
    case OP_RENAMEAT2:
      return syscall(SYS_renameat2, (int)a[0], r->s1, (int)a[1], r->s2, (unsigned)a[2]);
    case OP_FCHMODAT:
      return fchmodat((int)a[0], r->s1, (mode_t)a[1], (int)a[2]);
    case OP_FCHOWNAT:
      return fchownat((int)a[0], r->s1, (uid_t)a[1], (gid_t)a[2], (int)a[3]);
    case OP_UTIMENSAT:
      if (r->buflen < 2 * sizeof(struct timespec)) return errno = EINVAL, -1;
      return utimensat((int)a[0], r->s1, (const struct timespec *)r->buf, (int)a[1]);
    case OP_STATX:
      if (r->buflen < sizeof(struct statx)) return errno = EINVAL, -1;
      return statx((int)a[0], r->s1, (int)a[1], (unsigned)a[2], (struct statx *)r->buf);
    case OP_READLINKAT:
      return readlinkat((int)a[0], r->s1, r->buf, r->buflen);
    case OP_NAME_TO_HANDLE_AT: {
      if (r->buflen < sizeof(struct file_handle) + 8) return errno = EINVAL, -1;
      struct file_handle *fh = r->buf;
      fh->handle_bytes = (unsigned)(r->buflen - sizeof(struct file_handle));
      int mount_id;
      if (name_to_handle_at((int)a[0], r->s1, fh, &mount_id, (int)a[1]) != 0) return -1;
      return mount_id;
    }
    case OP_OPEN_BY_HANDLE_AT: {
      struct file_handle *fh = r->buf;
      if (r->buflen < sizeof(struct file_handle) || fh->handle_bytes > r->buflen - sizeof(struct file_handle))
        return errno = EINVAL, -1;
      return open_by_handle_at((int)a[0], fh, (int)a[1]);
    }
    case OP_GETDENTS:
      /* d_off cookies use all 64 bits (ext4 hashes): the offset comes as a decimal string. */
      if (!r->s1 || lseek((int)a[0], (off_t)strtoll(r->s1, NULL, 10), SEEK_SET) < 0) return -1;
      return syscall(SYS_getdents64, (int)a[0], r->buf, r->buflen);
    case OP_SETXATTR:
      return setxattr(r->s1, r->s2, r->buf, r->buflen, (int)a[0]);
    case OP_GETXATTR:
      return getxattr(r->s1, r->s2, r->buf, r->buflen);
    case OP_LISTXATTR:
      return listxattr(r->s1, r->buf, r->buflen);
    case OP_REMOVEXATTR:
      return removexattr(r->s1, r->s2);
    case OP_FALLOCATE:
      return fallocate((int)a[0], (int)a[1], (off_t)a[2], (off_t)a[3]);
    case OP_LSEEK:
      return lseek((int)a[0], (off_t)a[1], (int)a[2]);
    case OP_COPY_FILE_RANGE: {
      loff_t in = a[1], out = a[3];
      return copy_file_range((int)a[0], &in, (int)a[2], &out, (size_t)a[4], (unsigned)a[5]);
    }
    case OP_FSTATFS:
      if (r->buflen < sizeof(struct statfs)) return errno = EINVAL, -1;
      return fstatfs((int)a[0], (struct statfs *)r->buf);
    case OP_SYNCFS:
      return syncfs((int)a[0]);
    case OP_FTRUNCATE:
      return ftruncate((int)a[0], (off_t)a[1]);
    case OP_TRUNCATE:
      return truncate(r->s1, (off_t)a[0]);
    case OP_PWRITE:
      return pwrite((int)a[0], r->buf, r->buflen, (off_t)a[1]);
    case OP_CLOSE:
      return close((int)a[0]);
    case OP_FACCESSAT:
      return faccessat((int)a[0], r->s1, (int)a[1], (int)a[2]);
    case OP_LOOKUP: {
      /*
       * One trip for what every lookup needs: an O_PATH descriptor of name under dirfd
       * (never following a final symlink), its statx, and its file handle. buf receives
       * struct statx (256 bytes), then int32 mount_id (-1: no handle), then the
       * struct file_handle. Returns the descriptor. a[2] != 0 follows a final magic link
       * (only for /proc/self/fd/N of a file this daemon opened itself).
       */
      if (r->buflen < 256 + 4 + sizeof(struct file_handle) + 8) return errno = EINVAL, -1;
      int fd = openat((int)a[0], r->s1, (int)a[1] | O_PATH | (a[2] ? 0 : O_NOFOLLOW) | O_CLOEXEC);
      if (fd < 0) return -1;
      return describe(r, fd, 0, 0, 0, 1);
    }
    case OP_LOOKUP_LOCAL: {
      /*
       * OP_LOOKUP on this thread, for an entry on the parent's own device (a[1], a[2]:
       * major, minor): never across a mount (another device may be a network mount whose
       * attributes would need a round trip, or an automount). a[3] != 0: from the dentry
       * cache alone (RESOLVE_CACHED: where a lookup would need I/O or revalidation), for
       * disk file systems; 0 for file systems held in memory, where a lookup never waits.
       * Whatever is refused comes back EAGAIN, and the pool does it. a[4] != 0: no file
       * handle (an inode the caller knows already).
       */
      if (r->buflen < 256 + 4 + sizeof(struct file_handle) + 8) return errno = EINVAL, -1;
      struct open_how how = {
          .flags = O_PATH | O_NOFOLLOW | O_CLOEXEC,
          .resolve = RESOLVE_NO_XDEV | RESOLVE_NO_MAGICLINKS | (a[3] ? RESOLVE_CACHED : 0),
      };
      int fd = openat2_call((int)a[0], r->s1, &how);
      /* Kernels before 5.12 know no RESOLVE_CACHED (EINVAL), before 5.6 no openat2: the pool then. */
      if (fd < 0 && (errno == EINVAL || errno == ENOSYS || errno == E2BIG || errno == EXDEV)) errno = EAGAIN;
      if (fd < 0) return -1;
      return describe(r, fd, 1, (uint32_t)a[1], (uint32_t)a[2], !a[4]);
    }
    case OP_CREATE: {
      /*
       * create and tmpfile in one trip: openat(dirfd, name, flags, mode) as the caller; then,
       * as the daemon, what OP_LOOKUP gives for the new file, from its own descriptor (no
       * second name lookup to race on). buf: the OP_LOOKUP layout, then the int32 O_PATH fd
       * at 396. Returns the open file's descriptor. a[3] != 0: on this thread (see open_now).
       */
      if (r->buflen < 400) return errno = EINVAL, -1;
      int fd = a[3] ? open_now((int)a[0], r->s1, (int)a[1], (mode_t)a[2], 1) : openat((int)a[0], r->s1, (int)a[1] | O_CLOEXEC, (mode_t)a[2]);
      if (fd < 0) return -1;
      if (r->has_creds) restore();
      char path[32];
      snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
      int pfd = openat(AT_FDCWD, path, O_PATH | O_CLOEXEC);
      if (pfd < 0 || describe(r, pfd, 0, 0, 0, 1) < 0) return fail_closing(fd);
      memcpy((char *)r->buf + 396, &pfd, 4);
      return fd;
    }
    default:
      return errno = ENOSYS, -1;
  }
}

/*
 * a[5] of the calls that make an inode (CREATE, MKDIRAT, MKNODAT): UMASK_GIVEN | the
 * caller's umask, for the host kernel to apply as it does for that caller: not where the
 * directory's default ACL takes its place. 0: the daemon's own umask.
 */
#define UMASK_GIVEN 0x10000

static int takes_umask(const fsop_t *r) {
  return (r->op == OP_CREATE || r->op == OP_MKDIRAT || r->op == OP_MKNODAT) && (r->a[5] & UMASK_GIVEN);
}

/* The umask lives in the fs_struct the process's threads share: a thread that sets one for a
 * call first takes a copy of its own, so no other thread's calls ever see it. */
static __thread int own_fs;

static int set_umask(mode_t mask, mode_t *old) {
  if (!own_fs) {
    if (unshare(CLONE_FS) != 0) return -1;
    own_fs = 1;
  }
  *old = umask(mask);
  return 0;
}

static void execute(napi_env env, void *data) {
  (void)env;
  fsop_t *r = data;
  mode_t old_mask = 0;
  int masked = takes_umask(r);
  if (masked && set_umask((mode_t)(r->a[5] & 0777), &old_mask) != 0) {
    r->err = errno;
    r->ret = -1;
    return;
  }
  if (r->has_creds && become(r) != 0) {
    r->err = errno;
    r->ret = -1;
    restore();
  } else {
    r->ret = run(r);
    r->err = r->ret < 0 ? errno : 0;
    if (r->has_creds) restore();
  }
  if (masked) umask(old_mask);
}

static void free_op(napi_env env, fsop_t *r) {
  if (r->bufref) napi_delete_reference(env, r->bufref);
  free(r->s1);
  free(r->s2);
  free(r);
}

static void complete(napi_env env, napi_status status, void *data) {
  fsop_t *r = data;
  if (status != napi_ok) {
    r->ret = -1;
    r->err = ECANCELED;
  }
  if (r->ret < 0) {
    napi_reject_deferred(env, r->deferred, errno_error(env, r->err, op_names[r->op]));
  } else {
    napi_value v;
    napi_create_double(env, (double)r->ret, &v);
    napi_resolve_deferred(env, r->deferred, v);
  }
  napi_delete_async_work(env, r->work);
  free_op(env, r);
}

static int is_nullish(napi_env env, napi_value v) {
  napi_valuetype t;
  return napi_typeof(env, v, &t) != napi_ok || t == napi_null || t == napi_undefined;
}

/* Parses fsop's arguments; NULL (with an exception pending) when they are bad. */
/*
 * Fills the zeroed `r` from the JS arguments; 0, or -1 with an exception pending (and r's
 * strings freed). `keep`: the call outlives this one (the pool), so the buffer is pinned by
 * a reference; a call run at once needs none.
 */
static int parse_op(napi_env env, napi_callback_info info, fsop_t *r, int keep) {
  size_t argc = 11;
  napi_value argv[11];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 11) {
    napi_throw_type_error(env, "EINVAL", "fsop(op, creds, a0, a1, a2, a3, a4, a5, s1, s2, buf)");
    return -1;
  }
  int32_t op;
  if (napi_get_value_int32(env, argv[0], &op) != napi_ok || op <= 0 || op >= OP_MAX) {
    napi_throw_type_error(env, "EINVAL", "fsop: bad operation");
    return -1;
  }
  r->op = op;
  if (!is_nullish(env, argv[1])) {
    uint32_t n;
    if (napi_get_array_length(env, argv[1], &n) != napi_ok || n < 2 || n - 2 > MAX_GROUPS) {
      napi_throw_type_error(env, "EINVAL", "fsop: creds must be [uid, gid, ...groups] (at most 64 groups)");
      return -1;
    }
    uint32_t v[2 + MAX_GROUPS];
    for (uint32_t i = 0; i < n; i++) {
      napi_value e;
      if (napi_get_element(env, argv[1], i, &e) != napi_ok || napi_get_value_uint32(env, e, &v[i]) != napi_ok) {
        napi_throw_type_error(env, "EINVAL", "fsop: creds must be numbers");
        return -1;
      }
    }
    r->uid = v[0];
    r->gid = v[1];
    r->ngroups = (int)(n - 2);
    for (int i = 0; i < r->ngroups; i++) r->groups[i] = v[2 + i];
    r->has_creds = !are_ours(r);
  }
  for (int i = 0; i < 6; i++) {
    double d;
    if (napi_get_value_double(env, argv[2 + i], &d) != napi_ok) d = 0;
    r->a[i] = (int64_t)d;
  }
  if (!is_nullish(env, argv[8]) && !(r->s1 = get_string(env, argv[8]))) goto bad;
  if (!is_nullish(env, argv[9]) && !(r->s2 = get_string(env, argv[9]))) goto bad;
  if (!is_nullish(env, argv[10])) {
    bool isbuf;
    if (napi_is_buffer(env, argv[10], &isbuf) != napi_ok || !isbuf) goto bad;
    if (napi_get_buffer_info(env, argv[10], &r->buf, &r->buflen) != napi_ok) goto bad;
    /* Keep the buffer alive (and its memory where it is) until the call completes. */
    if (keep) napi_create_reference(env, argv[10], 1, &r->bufref);
  }
  return 0;

bad:
  free(r->s1);
  free(r->s2);
  r->s1 = r->s2 = NULL;
  napi_throw_type_error(env, "EINVAL", "fsop: strings must be strings and buf a Buffer");
  return -1;
}

napi_value js_fsop(napi_env env, napi_callback_info info) {
  fsop_t *r = calloc(1, sizeof *r);
  if (!r) return throw_errno(env, ENOMEM, "fsop");
  if (parse_op(env, info, r, 1) != 0) {
    free(r);
    return NULL;
  }
  napi_value promise, name;
  napi_create_promise(env, &r->deferred, &promise);
  napi_create_string_utf8(env, op_names[r->op], NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, execute, complete, r, &r->work);
  napi_queue_async_work(env, r->work);
  return promise;
}

/* On this thread, so no allocation and no reference to pin the buffer: it lives through the call. */
napi_value js_fsop_now(napi_env env, napi_callback_info info) {
  fsop_t op;
  memset(&op, 0, offsetof(fsop_t, groups));
  memset(&op.a, 0, sizeof op - offsetof(fsop_t, a));
  fsop_t *r = &op;
  if (parse_op(env, info, r, 0) != 0) return NULL;
  if (!may_run_now(r->op)) {
    free(r->s1);
    free(r->s2);
    napi_throw_type_error(env, "EINVAL", "fsopNow: this operation may wait; use fsop");
    return NULL;
  }
  execute(env, r);
  napi_value v;
  napi_create_double(env, r->ret < 0 ? -(double)r->err : (double)r->ret, &v);
  free(r->s1);
  free(r->s2);
  return v;
}
