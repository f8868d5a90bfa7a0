{
  "targets": [
    {
      "target_name": "dpfs_native",
      "sources": ["native/dpfs_native.c", "native/common.c", "native/mount.c", "native/poll.c", "native/busy_poll.c", "native/fsops.c", "native/vhost.c", "native/fusedev.c", "native/nowait.c", "native/ring_fast.c", "native/uring.c", "native/fuse_uring.c", "native/shared_map.cc"],
      "cflags_cc": ["-Wall", "-Wextra", "-O2", "-std=c++17"],
      "cflags": ["-Wall", "-Wextra", "-O2"],
      "libraries": ["-luring"]
    }
  ]
}
