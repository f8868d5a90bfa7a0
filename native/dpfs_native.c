/*
 * dpfs native primitives: only what Node cannot do itself (see each file).
 *   mount.c  mount(2), umount2(2)
 *   poll.c   fd readiness on the calling thread's event loop
 *   busy_poll.c  adaptive spinning before the event loop sleeps
 *   fsops.c  *at() system calls run on libuv's pool with the caller's credentials
 *   vhost.c  unix sockets with descriptor passing, memfd, eventfd
 *   fusedev.c  /dev/fuse reads (GETATTR and LOOKUP of published inodes answered there) and writes,
 *              kernel FUSE passthrough backing files (ioctls)
 *   shared_map.cc  guest memory as a SharedArrayBuffer shared by threads
 *   nowait.c  page-cache reads and writes that never block (RWF_NOWAIT)
 *   ring_fast.c  READ, WRITE and GETATTR on published files served straight off a virtqueue
 *   published.h  the SharedHandles protocol and GETATTR and LOOKUP replies, shared by those two
 *   uring.c  io_uring for the reads, writes and fsyncs that may wait
 *   fuse_uring.c  FUSE requests and replies over io_uring instead of /dev/fuse reads and writes
 * Errors are thrown (or rejected) as Errors carrying `code`, `errno` and `syscall`.
 */
#include "common.h"

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"mount", NULL, js_mount, NULL, NULL, NULL, napi_default, NULL},
      {"umount2", NULL, js_umount2, NULL, NULL, NULL, napi_default, NULL},
      {"watch", NULL, js_watch, NULL, NULL, NULL, napi_default, NULL},
      {"unwatch", NULL, js_unwatch, NULL, NULL, NULL, napi_default, NULL},
      {"busyPoll", NULL, js_busy_poll, NULL, NULL, NULL, napi_default, NULL},
      {"busyPollStats", NULL, js_busy_poll_stats, NULL, NULL, NULL, napi_default, NULL},
      {"fsop", NULL, js_fsop, NULL, NULL, NULL, napi_default, NULL},
      {"fsopNow", NULL, js_fsop_now, NULL, NULL, NULL, napi_default, NULL},
      {"listenUnix", NULL, js_listen_unix, NULL, NULL, NULL, napi_default, NULL},
      {"acceptUnix", NULL, js_accept_unix, NULL, NULL, NULL, napi_default, NULL},
      {"recvMsg", NULL, js_recv_msg, NULL, NULL, NULL, napi_default, NULL},
      {"sendMsg", NULL, js_send_msg, NULL, NULL, NULL, napi_default, NULL},
      {"mapShared", NULL, js_map_shared, NULL, NULL, NULL, napi_default, NULL},
      {"connectUnix", NULL, js_connect_unix, NULL, NULL, NULL, napi_default, NULL},
      {"memfdCreate", NULL, js_memfd_create, NULL, NULL, NULL, napi_default, NULL},
      {"eventfd", NULL, js_eventfd, NULL, NULL, NULL, napi_default, NULL},
      {"eventfdSignal", NULL, js_eventfd_signal, NULL, NULL, NULL, napi_default, NULL},
      {"eventfdDrain", NULL, js_eventfd_drain, NULL, NULL, NULL, napi_default, NULL},
      {"backingOpen", NULL, js_backing_open, NULL, NULL, NULL, napi_default, NULL},
      {"backingClose", NULL, js_backing_close, NULL, NULL, NULL, napi_default, NULL},
      {"devRead", NULL, js_dev_read, NULL, NULL, NULL, napi_default, NULL},
      {"devFastCreate", NULL, js_dev_fast_create, NULL, NULL, NULL, napi_default, NULL},
      {"devWritev", NULL, js_dev_writev, NULL, NULL, NULL, napi_default, NULL},
      {"rwNowait", NULL, js_rw_nowait, NULL, NULL, NULL, napi_default, NULL},
      {"ringFastCreate", NULL, js_ring_fast_create, NULL, NULL, NULL, napi_default, NULL},
      {"ringFastServe", NULL, js_ring_fast_serve, NULL, NULL, NULL, napi_default, NULL},
      {"threadVoluntarySwitches", NULL, js_thread_voluntary_switches, NULL, NULL, NULL, napi_default, NULL},
      {"uringCreate", NULL, js_uring_create, NULL, NULL, NULL, napi_default, NULL},
      {"uringSubmit", NULL, js_uring_submit, NULL, NULL, NULL, napi_default, NULL},
      {"fuseUringCreate", NULL, js_fuse_uring_create, NULL, NULL, NULL, napi_default, NULL},
      {"fuseUringCmd", NULL, js_fuse_uring_cmd, NULL, NULL, NULL, napi_default, NULL},
      {"fuseUringSubmit", NULL, js_fuse_uring_submit, NULL, NULL, NULL, napi_default, NULL},
      {"fuseUringClose", NULL, js_fuse_uring_close, NULL, NULL, NULL, napi_default, NULL},
      {"fuseUringMemory", NULL, js_fuse_uring_memory, NULL, NULL, NULL, napi_default, NULL},
  };
  fsop_module_init();
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
