#include "common.h"

#include <limits.h>
#include <sys/uio.h>

/*
 * preadv2/pwritev2 with RWF_NOWAIT, called synchronously on the event loop: the kernel
 * copies what the page cache holds and refuses (EAGAIN) anything that would wait for a
 * device or server, which the caller then sends to libuv's pool. A hit costs one system
 * call instead of a thread-pool round trip.
 *   rwNowait(fd, buffers, offset, write) -> bytes moved, or -errno (never throws for I/O errors)
 */
#ifndef RWF_NOWAIT
#define RWF_NOWAIT 0x00000008
#endif

napi_value js_rw_nowait(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  int32_t fd;
  double offset;
  bool write;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 4) return throw_errno(env, EINVAL, "rwNowait");
  CHECK(napi_get_value_int32(env, argv[0], &fd));
  CHECK(napi_get_value_double(env, argv[2], &offset));
  CHECK(napi_get_value_bool(env, argv[3], &write));
  struct iovec iov[IOV_MAX];
  uint32_t n = get_iovecs(env, argv[1], iov, IOV_MAX);
  if (n == 0 || offset < 0) return throw_errno(env, EINVAL, "rwNowait");
  ssize_t r = write ? pwritev2(fd, iov, (int)n, (off_t)offset, RWF_NOWAIT) : preadv2(fd, iov, (int)n, (off_t)offset, RWF_NOWAIT);
  napi_value v;
  napi_create_double(env, r < 0 ? -(double)errno : (double)r, &v);
  return v;
}
