{
  "targets": [
    {
      "target_name": "dpfs_native",
      "sources": ["native/dpfs_native.c"],
      "cflags": ["-Wall", "-Wextra", "-O2"]
    }
  ]
}
