{
  "targets": [
    {
      "target_name": "dpfs_native",
      "sources": ["native/dpfs_native.c", "native/common.c", "native/mount.c", "native/poll.c", "native/fsops.c", "native/vhost.c", "native/fusedev.c"],
      "cflags": ["-Wall", "-Wextra", "-O2"]
    }
  ]
}
