/* Shared helpers of the dpfs native addon. */
#ifndef DPFS_COMMON_H
#define DPFS_COMMON_H

#define _GNU_SOURCE
#include <errno.h>
#include <node_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(call)                                                   \
  do {                                                                \
    if ((call) != napi_ok) {                                          \
      napi_throw_error(env, "EINVAL", "dpfs_native: bad arguments");  \
      return NULL;                                                    \
    }                                                                 \
  } while (0)

/* Throws an Error with code (errno name), errno (negative) and syscall; returns NULL. */
napi_value throw_errno(napi_env env, int err, const char *syscall);
/* Builds (without throwing) the same Error object. */
napi_value errno_error(napi_env env, int err, const char *syscall);
/* Throws the Error of the failed `syscall` (errno as it is now) after closing fd; returns NULL. */
napi_value close_and_throw(napi_env env, int fd, const char *syscall);
/*
 * Calls the JS function `callback` from a libuv callback (inside a handle scope); promise
 * jobs run after it, and a throw is reported as an uncaught exception.
 */
void call_back(napi_env env, napi_ref callback, napi_async_context context, size_t argc, const napi_value *argv);
/*
 * The completions ready on `ring`, as a Float64Array [id, result, ...] (at most what was ready
 * when called), consumed from the ring; `id_of` gives a completion's id (and may free what its
 * user data points at). *count: how many. In uring.c.
 */
struct io_uring;
struct io_uring_cqe;
napi_value ring_completions(napi_env env, struct io_uring *ring, double (*id_of)(struct io_uring_cqe *), unsigned *count);
/* A JS number for n (a descriptor, a count, a status). */
napi_value int32_value(napi_env env, int32_t n);
/* Copies a JS string argument into a malloc'd C string (caller frees); NULL on failure. */
char *get_string(napi_env env, napi_value v);
/*
 * Fills iov from a JS array of 1..max Buffers/Uint8Arrays (their memory, no copy); returns
 * how many, or 0 if it is not such an array.
 */
struct iovec;
uint32_t get_iovecs(napi_env env, napi_value array, struct iovec *iov, uint32_t max);

napi_value js_mount(napi_env env, napi_callback_info info);
napi_value js_umount2(napi_env env, napi_callback_info info);
napi_value js_watch(napi_env env, napi_callback_info info);
napi_value js_busy_poll(napi_env env, napi_callback_info info);
napi_value js_busy_poll_stats(napi_env env, napi_callback_info info);
napi_value js_unwatch(napi_env env, napi_callback_info info);
napi_value js_fsop(napi_env env, napi_callback_info info);
napi_value js_fsop_now(napi_env env, napi_callback_info info);
napi_value js_listen_unix(napi_env env, napi_callback_info info);
napi_value js_accept_unix(napi_env env, napi_callback_info info);
napi_value js_recv_msg(napi_env env, napi_callback_info info);
napi_value js_send_msg(napi_env env, napi_callback_info info);
napi_value js_map_shared(napi_env env, napi_callback_info info);
napi_value js_connect_unix(napi_env env, napi_callback_info info);
napi_value js_memfd_create(napi_env env, napi_callback_info info);
napi_value js_eventfd(napi_env env, napi_callback_info info);
napi_value js_eventfd_signal(napi_env env, napi_callback_info info);
napi_value js_eventfd_drain(napi_env env, napi_callback_info info);
napi_value js_backing_open(napi_env env, napi_callback_info info);
napi_value js_backing_close(napi_env env, napi_callback_info info);
napi_value js_dev_read(napi_env env, napi_callback_info info);
napi_value js_dev_fast_create(napi_env env, napi_callback_info info);
napi_value js_dev_writev(napi_env env, napi_callback_info info);
napi_value js_rw_nowait(napi_env env, napi_callback_info info);
napi_value js_ring_fast_create(napi_env env, napi_callback_info info);
napi_value js_ring_fast_serve(napi_env env, napi_callback_info info);
napi_value js_thread_voluntary_switches(napi_env env, napi_callback_info info);
napi_value js_uring_create(napi_env env, napi_callback_info info);
napi_value js_uring_submit(napi_env env, napi_callback_info info);
napi_value js_fuse_uring_create(napi_env env, napi_callback_info info);
napi_value js_fuse_uring_cmd(napi_env env, napi_callback_info info);
napi_value js_fuse_uring_submit(napi_env env, napi_callback_info info);
napi_value js_fuse_uring_close(napi_env env, napi_callback_info info);
napi_value js_fuse_uring_memory(napi_env env, napi_callback_info info);
void fsop_module_init(void);

#endif
