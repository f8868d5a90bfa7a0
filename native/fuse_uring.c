#include "common.h"

#include <liburing.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>
#include <uv.h>

/*
 * FUSE over io_uring (Linux 6.14+, fuse module parameter enable_uring): the kernel hands
 * requests to ring entries the daemon registered, one queue per possible CPU, and takes the
 * reply and the entry back in one command. Replaces a read(2) and a write(2) of /dev/fuse
 * per request with commands batched into one io_uring_enter per event-loop turn.
 *
 * Each entry is a header buffer (struct fuse_uring_req_header: fuse_in/out_header area,
 * the opcode's fixed struct, and fuse_uring_ent_in_out) and a payload buffer, both JS
 * memory the caller keeps alive while the ring exists.
 *   fuseUringCreate(devFd, entries, onComplete(Float64Array [entry, result, ...])) -> handle
 *   fuseUringCmd(handle, cmd, entry, qid, header, payload) -> 0 queued, or -errno.
 *     cmd 1 REGISTER (header and payload become the entry's buffers), 2 COMMIT_AND_FETCH
 *     (the reply is in the buffers; the commit id is read from the header).
 *   fuseUringSubmit(handle) -> 0, or -errno
 *   fuseUringClose(handle): ends the ring; the kernel cancels what is still registered.
 *   fuseUringMemory(bytes) -> ArrayBuffer of page-aligned memory (O_DIRECT reads and writes
 *     straight from payloads need aligned buffers); unmapped when collected.
 */
enum { CMD_REGISTER = 1, CMD_COMMIT_AND_FETCH = 2 };

/* Layout of struct fuse_uring_req_header (include/uapi/linux/fuse.h, 7.42). */
#define HDR_IN_OUT 0
#define HDR_ENT_IN_OUT 256
#define HDR_SIZE 288
#define ENT_COMMIT_ID 8

/* In the SQE128 command area. */
struct cmd_req {
  uint64_t flags;
  uint64_t commit_id;
  uint16_t qid;
  uint8_t padding[6];
};

typedef struct {
  struct io_uring ring;
  int dev_fd;
  int open;
  uv_poll_t poll;
  napi_env env;
  napi_ref callback;
  napi_async_context context;
  uint32_t entries;
  /* Per entry: header and payload, the iovec pair REGISTER points at. */
  struct iovec *iov;
} fring_t;

static void fring_end(fring_t *f) {
  if (!f->open) return;
  f->open = 0;
  uv_poll_stop(&f->poll);
  uv_close((uv_handle_t *)&f->poll, NULL);
  napi_delete_reference(f->env, f->callback);
  napi_async_destroy(f->env, f->context);
  io_uring_queue_exit(&f->ring);
  free(f->iov);
  f->iov = NULL;
}

static void on_cleanup(void *arg) { fring_end(arg); }

/* An entry's index is its commands' user data. */
static double entry_of(struct io_uring_cqe *cqe) { return (double)cqe->user_data; }

static void on_events(uv_poll_t *poll, int status, int events) {
  (void)status;
  (void)events;
  fring_t *f = poll->data;
  /* The callback may end the ring (close): look again before each batch. */
  while (f->open && io_uring_cq_ready(&f->ring) > 0) {
    napi_env env = f->env;
    napi_handle_scope scope;
    napi_open_handle_scope(env, &scope);
    unsigned n;
    napi_value arr = ring_completions(env, &f->ring, entry_of, &n);
    call_back(env, f->callback, f->context, 1, &arr);
    napi_close_handle_scope(env, scope);
  }
}

static void fring_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  fring_t *f = data;
  if (f->open) {
    napi_remove_env_cleanup_hook(f->env, on_cleanup, f);
    fring_end(f);
  }
  /* The uv handle may still be closing: the struct stays (one per device, rare). */
}

napi_value js_fuse_uring_create(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  int32_t dev_fd;
  uint32_t entries;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_int32(env, argv[0], &dev_fd));
  CHECK(napi_get_value_uint32(env, argv[1], &entries));
  if (entries == 0 || entries > 65536) return throw_errno(env, EINVAL, "fuseUringCreate");
  fring_t *f = calloc(1, sizeof *f);
  if (!f) return throw_errno(env, ENOMEM, "io_uring_setup");
  f->iov = calloc(entries * 2, sizeof(struct iovec));
  if (!f->iov) {
    free(f);
    return throw_errno(env, ENOMEM, "io_uring_setup");
  }
  /*
   * 128-byte SQEs carry the FUSE command. Requests reach this thread as task work: with
   * cooperative task running that waits for its next system call or wakes it from sleep,
   * rather than interrupting it.
   */
  struct io_uring_params p = {.flags = IORING_SETUP_SQE128 | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER};
  p.cq_entries = entries * 2;
  p.flags |= IORING_SETUP_CQSIZE;
  int err = io_uring_queue_init_params(entries, &f->ring, &p);
  if (err == -EINVAL) {
    struct io_uring_params q = {.flags = IORING_SETUP_SQE128 | IORING_SETUP_CQSIZE, .cq_entries = entries * 2};
    err = io_uring_queue_init_params(entries, &f->ring, &q);
  }
  if (err < 0) {
    free(f->iov);
    free(f);
    return throw_errno(env, -err, "io_uring_setup");
  }
  f->dev_fd = dev_fd;
  f->entries = entries;
  f->env = env;
  f->open = 1;
  napi_value name;
  napi_create_string_utf8(env, "dpfs:fuse-uring", NAPI_AUTO_LENGTH, &name);
  napi_create_reference(env, argv[2], 1, &f->callback);
  napi_async_init(env, NULL, name, &f->context);
  uv_loop_t *loop;
  napi_get_uv_event_loop(env, &loop);
  /* The ring's own descriptor is readable while completions wait: nothing to drain. */
  uv_poll_init(loop, &f->poll, f->ring.ring_fd);
  f->poll.data = f;
  uv_poll_start(&f->poll, UV_READABLE, on_events);
  /* The /dev/fuse watch keeps the loop alive while the mount lives; this one need not. */
  uv_unref((uv_handle_t *)&f->poll);
  napi_add_env_cleanup_hook(env, on_cleanup, f);
  napi_value handle;
  napi_create_external(env, f, fring_finalize, NULL, &handle);
  return handle;
}

static fring_t *get_ring(napi_env env, napi_value v) {
  fring_t *f = NULL;
  if (napi_get_value_external(env, v, (void **)&f) != napi_ok) return NULL;
  return f;
}

/* The ring of a call whose one argument is its handle; NULL if it is not one. */
static fring_t *ring_arg(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1) return NULL;
  return get_ring(env, argv[0]);
}

static struct io_uring_sqe *next_sqe(fring_t *f) {
  struct io_uring_sqe *sqe = io_uring_get_sqe(&f->ring);
  if (!sqe) {
    io_uring_submit(&f->ring);
    sqe = io_uring_get_sqe(&f->ring);
  }
  return sqe;
}

napi_value js_fuse_uring_cmd(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  uint32_t cmd, entry, qid;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 6) return throw_errno(env, EINVAL, "fuseUringCmd");
  fring_t *f = get_ring(env, argv[0]);
  if (!f) return throw_errno(env, EINVAL, "fuseUringCmd");
  if (!f->open) return int32_value(env, -ENOTCONN);
  CHECK(napi_get_value_uint32(env, argv[1], &cmd));
  CHECK(napi_get_value_uint32(env, argv[2], &entry));
  CHECK(napi_get_value_uint32(env, argv[3], &qid));
  if (entry >= f->entries || qid > 0xffff || (cmd != CMD_REGISTER && cmd != CMD_COMMIT_AND_FETCH)) return throw_errno(env, EINVAL, "fuseUringCmd");
  struct iovec *iov = &f->iov[2 * entry];
  if (cmd == CMD_REGISTER) {
    /* The buffers stay the entry's for the ring's life: the kernel keeps their addresses. */
    void *h, *p;
    size_t hl, pl;
    napi_typedarray_type t;
    napi_value ab;
    size_t off;
    CHECK(napi_get_typedarray_info(env, argv[4], &t, &hl, &h, &ab, &off));
    CHECK(napi_get_typedarray_info(env, argv[5], &t, &pl, &p, &ab, &off));
    if (hl < HDR_SIZE || pl == 0) return throw_errno(env, EINVAL, "fuseUringCmd");
    iov[0].iov_base = h;
    iov[0].iov_len = hl;
    iov[1].iov_base = p;
    iov[1].iov_len = pl;
  } else if (!iov[0].iov_base) {
    return throw_errno(env, EINVAL, "fuseUringCmd");
  }
  struct io_uring_sqe *sqe = next_sqe(f);
  if (!sqe) return int32_value(env, -EBUSY);
  memset(sqe, 0, 2 * sizeof *sqe); /* 128 bytes: the command area is the second half */
  sqe->opcode = IORING_OP_URING_CMD;
  sqe->fd = f->dev_fd;
  sqe->cmd_op = cmd;
  sqe->user_data = entry;
  struct cmd_req *req = (struct cmd_req *)sqe->cmd;
  req->qid = (uint16_t)qid;
  if (cmd == CMD_REGISTER) {
    sqe->addr = (uint64_t)(uintptr_t)iov;
    sqe->len = 2;
  } else {
    memcpy(&req->commit_id, (char *)iov[0].iov_base + HDR_ENT_IN_OUT + ENT_COMMIT_ID, sizeof req->commit_id);
  }
  return int32_value(env, 0);
}

napi_value js_fuse_uring_submit(napi_env env, napi_callback_info info) {
  fring_t *f = ring_arg(env, info);
  if (!f) return throw_errno(env, EINVAL, "fuseUringSubmit");
  if (!f->open) return int32_value(env, -ENOTCONN);
  int r = io_uring_submit(&f->ring);
  return int32_value(env, r < 0 ? r : 0);
}

napi_value js_fuse_uring_close(napi_env env, napi_callback_info info) {
  fring_t *f = ring_arg(env, info);
  if (!f) return throw_errno(env, EINVAL, "fuseUringClose");
  if (f->open) {
    napi_remove_env_cleanup_hook(env, on_cleanup, f);
    fring_end(f);
  }
  return NULL;
}

static void unmap_memory(napi_env env, void *data, void *hint) {
  (void)env;
  munmap(data, (size_t)(uintptr_t)hint);
}

napi_value js_fuse_uring_memory(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  double bytes;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_double(env, argv[0], &bytes));
  if (!(bytes > 0) || bytes > (double)(1ULL << 40)) return throw_errno(env, EINVAL, "mmap");
  size_t n = (size_t)bytes;
  void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return throw_errno(env, errno, "mmap");
  napi_value ab;
  if (napi_create_external_arraybuffer(env, p, n, unmap_memory, (void *)(uintptr_t)n, &ab) != napi_ok) {
    munmap(p, n);
    return throw_errno(env, ENOMEM, "napi_create_external_arraybuffer");
  }
  return ab;
}
