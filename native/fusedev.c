/*
 * Kernel FUSE passthrough (Linux 6.9+): registers an open file as the backing file of a
 * FUSE open, so the kernel serves its reads and writes without the daemon.
 *   backingOpen(devFd, fd) -> backing id      FUSE_DEV_IOC_BACKING_OPEN
 *   backingClose(devFd, id)                   FUSE_DEV_IOC_BACKING_CLOSE
 * and the device's own reads and writes (see below).
 */
#include "common.h"

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
 *   devRead(devFd, scratch) -> bytes of the request read into scratch; 0 at end of file,
 *     -errno on failure (EAGAIN: nothing queued). The caller copies what it keeps: in JS a
 *     small copy comes from Node's buffer pool, where a native copy would be a malloc and a
 *     backing store for the collector to sweep, per request.
 *   devWritev(devFd, chunks) -> bytes written; throws on failure (code: the errno name).
 */
napi_value js_dev_read(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int32_t fd;
  void *data;
  size_t len;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_int32(env, argv[0], &fd));
  CHECK(napi_get_buffer_info(env, argv[1], &data, &len));
  ssize_t n = read(fd, data, len);
  return int32_value(env, n >= 0 ? (int32_t)n : -errno);
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
