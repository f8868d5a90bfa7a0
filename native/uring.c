#include "common.h"

#include <limits.h>
#include <liburing.h>
#include <unistd.h>
#include <uv.h>

/*
 * io_uring for the file reads, writes and fsyncs that cannot be answered at once: one ring
 * per thread that asks for it, kept for the life of that thread. Operations are queued as
 * they come and submitted together once per event-loop turn; the kernel runs each inline
 * where it can and on its own workers where it would wait, so no thread of ours wakes for
 * it. The thread's event loop watches the ring's own descriptor (readable while completions
 * wait: nothing to drain) and hands them to one JS callback per batch.
 *   uringCreate(entries, onComplete(Float64Array [id, result, ...])) -> handle
 *   uringSubmit(handle, op, id, fd, buffers | null, offset, datasync) -> 0 queued, or -errno.
 *     op 1 readv, 2 writev, 3 fsync; op 0 submits everything queued (once per event-loop
 *     turn: one system call for many operations) and returns 1 if the kernel was short of
 *     resources (submit again later). The caller keeps the buffers alive until completion.
 */
enum { U_FLUSH = 0, U_READV = 1, U_WRITEV = 2, U_FSYNC = 3 };

typedef struct {
  struct io_uring ring;
  uv_poll_t poll;
  napi_env env;
  napi_ref callback;
  napi_async_context context;
  /* Operations not completed yet: the event loop stays alive while there are any. */
  unsigned inflight;
} uring_t;

typedef struct {
  double id;
  int niov;
  struct iovec iov[];
} ureq_t;

napi_value ring_completions(napi_env env, struct io_uring *ring, double (*id_of)(struct io_uring_cqe *), unsigned *count) {
  unsigned ready = io_uring_cq_ready(ring);
  void *data;
  napi_value ab, arr;
  napi_create_arraybuffer(env, ready * 2 * sizeof(double), &data, &ab);
  double *out = data;
  unsigned head, i = 0;
  struct io_uring_cqe *cqe;
  io_uring_for_each_cqe(ring, head, cqe) {
    if (i == ready) break;
    out[2 * i] = id_of(cqe);
    out[2 * i + 1] = cqe->res;
    i++;
  }
  io_uring_cq_advance(ring, i);
  napi_create_typedarray(env, napi_float64_array, i * 2, ab, 0, &arr);
  *count = i;
  return arr;
}

/* The id the operation was queued with; its request record goes with the completion. */
static double request_id(struct io_uring_cqe *cqe) {
  ureq_t *r = io_uring_cqe_get_data(cqe);
  double id = r->id;
  free(r);
  return id;
}

static void on_events(uv_poll_t *poll, int status, int events) {
  (void)status;
  (void)events;
  uring_t *u = poll->data;
  while (io_uring_cq_ready(&u->ring) > 0) {
    napi_env env = u->env;
    napi_handle_scope scope;
    napi_open_handle_scope(env, &scope);
    unsigned n;
    napi_value arr = ring_completions(env, &u->ring, request_id, &n);
    u->inflight -= n;
    if (u->inflight == 0) uv_unref((uv_handle_t *)&u->poll);
    call_back(env, u->callback, u->context, 1, &arr);
    napi_close_handle_scope(env, scope);
  }
}

/*
 * The thread is ending (a worker's env goes away): stop watching, release the JS callback,
 * and let the kernel finish what it still reads or writes in this thread's buffers before the
 * ring goes. The struct is left behind: its uv handle finishes closing after we return.
 */
static void uring_cleanup(void *arg) {
  uring_t *u = arg;
  uv_poll_stop(&u->poll);
  uv_close((uv_handle_t *)&u->poll, NULL);
  napi_delete_reference(u->env, u->callback);
  napi_async_destroy(u->env, u->context);
  io_uring_submit(&u->ring);
  while (u->inflight > 0) {
    struct io_uring_cqe *cqe;
    if (io_uring_wait_cqe(&u->ring, &cqe) != 0) break;
    free(io_uring_cqe_get_data(cqe));
    io_uring_cqe_seen(&u->ring, cqe);
    u->inflight--;
  }
  io_uring_queue_exit(&u->ring);
}

napi_value js_uring_create(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  uint32_t entries;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_uint32(env, argv[0], &entries));
  uring_t *u = calloc(1, sizeof *u);
  if (!u) return throw_errno(env, ENOMEM, "io_uring_setup");
  /*
   * Completions from the kernel's workers reach this thread as task work: cooperative task
   * running lets them wait for its next system call (or wakes it from sleep) instead of
   * interrupting it, which costs most where interrupts are dear (virtual machines).
   * Kernels before 6.0 refuse the flags: then none.
   */
  struct io_uring_params params = {.flags = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER};
  int err = io_uring_queue_init_params(entries, &u->ring, &params);
  if (err == -EINVAL) err = io_uring_queue_init(entries, &u->ring, 0);
  if (err < 0) {
    free(u);
    return throw_errno(env, -err, "io_uring_setup");
  }
  u->env = env;
  napi_value name;
  napi_create_string_utf8(env, "dpfs:uring", NAPI_AUTO_LENGTH, &name);
  napi_create_reference(env, argv[1], 1, &u->callback);
  napi_async_init(env, NULL, name, &u->context);
  uv_loop_t *loop;
  napi_get_uv_event_loop(env, &loop);
  uv_poll_init(loop, &u->poll, u->ring.ring_fd);
  u->poll.data = u;
  uv_poll_start(&u->poll, UV_READABLE, on_events);
  uv_unref((uv_handle_t *)&u->poll); /* referenced only while operations are in flight */
  napi_add_env_cleanup_hook(env, uring_cleanup, u);
  napi_value handle;
  napi_create_external(env, u, NULL, NULL, &handle);
  return handle;
}

napi_value js_uring_submit(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7];
  uring_t *u;
  int32_t op, fd;
  double id, offset;
  bool datasync;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 7) return throw_errno(env, EINVAL, "uringSubmit");
  CHECK(napi_get_value_external(env, argv[0], (void **)&u));
  CHECK(napi_get_value_int32(env, argv[1], &op));
  CHECK(napi_get_value_double(env, argv[2], &id));
  CHECK(napi_get_value_int32(env, argv[3], &fd));
  CHECK(napi_get_value_double(env, argv[5], &offset));
  CHECK(napi_get_value_bool(env, argv[6], &datasync));
  uint32_t n = 0;
  if (op == U_FLUSH) return int32_value(env, io_uring_submit(&u->ring) < 0 ? 1 : 0);
  if (op == U_READV || op == U_WRITEV) {
    CHECK(napi_get_array_length(env, argv[4], &n));
    if (n == 0 || n > IOV_MAX || offset < 0) return throw_errno(env, EINVAL, "uringSubmit");
  } else if (op != U_FSYNC) {
    return throw_errno(env, EINVAL, "uringSubmit");
  }
  ureq_t *r = malloc(sizeof *r + n * sizeof(struct iovec));
  if (!r) return throw_errno(env, ENOMEM, "uringSubmit");
  r->id = id;
  r->niov = (int)n;
  if (n > 0 && get_iovecs(env, argv[4], r->iov, n) != n) {
    free(r);
    return throw_errno(env, EINVAL, "uringSubmit");
  }
  struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
  if (!sqe) {
    io_uring_submit(&u->ring);
    sqe = io_uring_get_sqe(&u->ring);
  }
  int res = 0;
  if (!sqe) {
    free(r);
    res = -EBUSY;
  } else {
    if (op == U_READV) io_uring_prep_readv(sqe, fd, r->iov, n, (uint64_t)offset);
    else if (op == U_WRITEV) io_uring_prep_writev(sqe, fd, r->iov, n, (uint64_t)offset);
    else io_uring_prep_fsync(sqe, fd, datasync ? IORING_FSYNC_DATASYNC : 0);
    io_uring_sqe_set_data(sqe, r);
    if (u->inflight++ == 0) uv_ref((uv_handle_t *)&u->poll);
  }
  return int32_value(env, res);
}
