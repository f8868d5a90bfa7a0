/*
 * What a vhost-user backend needs from the OS and Node lacks:
 *   listenUnix(path) -> fd          a non-blocking listening unix socket
 *   acceptUnix(fd) -> fd | -1       accept one connection (-1: none pending)
 *   recvMsg(fd, buf) -> {n, fds} | null
 *                                   one recvmsg: bytes and the descriptors that came with
 *                                   exactly those bytes (null: nothing pending; n 0: closed)
 *   sendMsg(fd, buf, fds?) -> n     one sendmsg, with descriptors (the VMM side, for the
 *                                   guest-driver harness)
 *   connectUnix(path) -> fd         a non-blocking connection to a vhost-user socket
 *   memfdCreate(name, size) -> fd   guest memory to share; eventfd() -> fd  kick/call
 *   mapShared(fd, size, offset) -> ArrayBuffer
 *                                   mmap(MAP_SHARED) of guest memory; unmapped when the
 *                                   ArrayBuffer is garbage-collected, never before
 */
#include "common.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_FDS 8

/* Fills a unix socket address from the single path argument; 0, or an errno. */
static int unix_addr_arg(napi_env env, napi_callback_info info, struct sockaddr_un *sa) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1) return EINVAL;
  char *path = get_string(env, argv[0]);
  if (!path) return EINVAL;
  memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  int err = strlen(path) >= sizeof sa->sun_path ? ENAMETOOLONG : 0;
  if (!err) strcpy(sa->sun_path, path);
  free(path);
  return err;
}

napi_value js_listen_unix(napi_env env, napi_callback_info info) {
  struct sockaddr_un sa;
  int err = unix_addr_arg(env, info, &sa);
  if (err) return throw_errno(env, err, "listenUnix");
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, errno, "socket");
  /*
   * Bound under a temporary name and renamed into place once listening: the path appears
   * only when connections to it are taken (a VMM started as soon as the file exists, as
   * QEMU often is, would otherwise be refused between bind and listen). rename() also
   * replaces a stale socket left by an earlier daemon. Paths too long for the temporary
   * name are bound directly.
   */
  struct sockaddr_un tmp = sa;
  int n = snprintf(tmp.sun_path, sizeof tmp.sun_path, "%s.%d~", sa.sun_path, (int)getpid());
  int staged = n > 0 && (size_t)n < sizeof tmp.sun_path;
  const struct sockaddr_un *at = staged ? &tmp : &sa;
  unlink(at->sun_path);
  if (bind(fd, (const struct sockaddr *)at, sizeof *at) != 0) return close_and_throw(env, fd, "bind");
  if (listen(fd, 4) != 0 || (staged && rename(tmp.sun_path, sa.sun_path) != 0)) {
    int e = errno;
    unlink(at->sun_path);
    close(fd);
    return throw_errno(env, e, "listen");
  }
  return int32_value(env, fd);
}

napi_value js_accept_unix(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t lfd;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_int32(env, argv[0], &lfd));
  int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return throw_errno(env, errno, "accept4");
  return int32_value(env, fd);
}

/* The (fd, buffer, ...) arguments of recvMsg and sendMsg: *argc in, the count given out. */
static napi_status socket_args(napi_env env, napi_callback_info info, size_t *argc, napi_value *argv, int32_t *fd, struct iovec *iov) {
  napi_status st = napi_get_cb_info(env, info, argc, argv, NULL, NULL);
  if (st == napi_ok) st = napi_get_value_int32(env, argv[0], fd);
  if (st == napi_ok) st = napi_get_buffer_info(env, argv[1], &iov->iov_base, &iov->iov_len);
  return st;
}

napi_value js_recv_msg(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int32_t fd;
  struct iovec iov;
  CHECK(socket_args(env, info, &argc, argv, &fd, &iov));
  char control[CMSG_SPACE(MAX_FDS * sizeof(int))];
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
  ssize_t n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
  napi_value result;
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
      napi_get_null(env, &result);
      return result;
    }
    return throw_errno(env, errno, "recvmsg");
  }
  napi_value fds, jn;
  napi_create_array(env, &fds);
  uint32_t nfds = 0;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    int *p = (int *)CMSG_DATA(c);
    for (size_t i = 0; i < count; i++) {
      napi_value v;
      napi_create_int32(env, p[i], &v);
      napi_set_element(env, fds, nfds++, v);
    }
  }
  /* Descriptors beyond our control space were dropped by the kernel: say so. */
  napi_value truncated;
  napi_get_boolean(env, (msg.msg_flags & MSG_CTRUNC) != 0, &truncated);
  napi_create_object(env, &result);
  napi_create_int32(env, (int32_t)n, &jn);
  napi_set_named_property(env, result, "n", jn);
  napi_set_named_property(env, result, "fds", fds);
  napi_set_named_property(env, result, "truncated", truncated);
  return result;
}

napi_value js_send_msg(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  int32_t fd;
  struct iovec iov;
  CHECK(socket_args(env, info, &argc, argv, &fd, &iov));
  int fds[MAX_FDS];
  uint32_t nfds = 0;
  if (argc >= 3) {
    napi_valuetype t;
    CHECK(napi_typeof(env, argv[2], &t));
    if (t == napi_object) {
      CHECK(napi_get_array_length(env, argv[2], &nfds));
      if (nfds > MAX_FDS) return throw_errno(env, EINVAL, "sendmsg");
      for (uint32_t i = 0; i < nfds; i++) {
        napi_value e;
        CHECK(napi_get_element(env, argv[2], i, &e));
        CHECK(napi_get_value_int32(env, e, &fds[i]));
      }
    }
  }
  char control[CMSG_SPACE(MAX_FDS * sizeof(int))];
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
  if (nfds) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
    memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
  }
  ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL);
  if (n < 0) return throw_errno(env, errno, "sendmsg");
  return int32_value(env, (int32_t)n);
}

napi_value js_connect_unix(napi_env env, napi_callback_info info) {
  struct sockaddr_un sa;
  int err = unix_addr_arg(env, info, &sa);
  if (err) return throw_errno(env, err, "connectUnix");
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, errno, "socket");
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) return close_and_throw(env, fd, "connect");
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  return int32_value(env, fd);
}

napi_value js_memfd_create(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  double size;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  char *name = argc == 2 ? get_string(env, argv[0]) : NULL;
  if (!name || napi_get_value_double(env, argv[1], &size) != napi_ok || size <= 0) {
    free(name);
    return throw_errno(env, EINVAL, "memfd_create");
  }
  int fd = memfd_create(name, MFD_CLOEXEC);
  free(name);
  if (fd < 0) return throw_errno(env, errno, "memfd_create");
  if (ftruncate(fd, (off_t)size) != 0) return close_and_throw(env, fd, "ftruncate");
  return int32_value(env, fd);
}

napi_value js_eventfd(napi_env env, napi_callback_info info) {
  (void)info;
  int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) return throw_errno(env, errno, "eventfd");
  return int32_value(env, fd);
}

/*
 * eventfd signalling without Node's fs machinery (one per kick and per interrupt):
 * eventfdSignal(fd) -> 0 or -errno; eventfdDrain(fd) -> the count read, 0 when there was
 * none (EAGAIN), or -errno.
 */
napi_value js_eventfd_signal(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t fd;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_int32(env, argv[0], &fd));
  uint64_t one = 1;
  return int32_value(env, write(fd, &one, sizeof one) == sizeof one ? 0 : -errno);
}

napi_value js_eventfd_drain(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t fd;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_int32(env, argv[0], &fd));
  uint64_t n = 0;
  ssize_t r = read(fd, &n, sizeof n);
  napi_value v;
  napi_create_double(env, r == sizeof n ? (double)n : errno == EAGAIN ? 0 : -(double)errno, &v);
  return v;
}
