/*
 * Guest memory shared between threads: mmap(MAP_SHARED) of a memory region fd, handed to
 * JS as a SharedArrayBuffer. Its backing store is reference-counted by V8 across every
 * thread (worker) it is posted to, and unmapped only when the last reference is gone.
 * N-API cannot make a SharedArrayBuffer over external memory, so this one function uses
 * V8 directly; a v8::Local is what Node's napi_value points at.
 */
#include <node_api.h>
#include <v8.h>

#include <cerrno>
#include <cstring>
#include <sys/mman.h>
#include <sys/stat.h>

extern "C" napi_value throw_errno(napi_env env, int err, const char *syscall);

static void unmap(void *data, size_t length, void *) { munmap(data, length); }

extern "C" napi_value js_map_shared(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  int32_t fd;
  double size, offset;
  if (napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr) != napi_ok || argc < 3 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_get_value_double(env, argv[1], &size) != napi_ok ||
      napi_get_value_double(env, argv[2], &offset) != napi_ok)
    return throw_errno(env, EINVAL, "mmap");
  if (!(size > 0) || offset < 0 || size > (double)(1ULL << 46)) return throw_errno(env, EINVAL, "mmap");
  /*
   * Touching a shared mapping past the end of its file raises SIGBUS, which would kill the
   * daemon: a VMM's region must lie within its file (memfd, hugetlbfs or plain file).
   */
  struct stat st;
  if (fstat(fd, &st) != 0) return throw_errno(env, errno, "fstat");
  if (!S_ISREG(st.st_mode) || (double)st.st_size < offset + size) return throw_errno(env, EINVAL, "mmap: region beyond its file");
  void *addr = mmap(nullptr, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)offset);
  if (addr == MAP_FAILED) return throw_errno(env, errno, "mmap");
  v8::Isolate *isolate = v8::Isolate::GetCurrent();
  std::unique_ptr<v8::BackingStore> store = v8::SharedArrayBuffer::NewBackingStore(addr, (size_t)size, unmap, nullptr);
  v8::Local<v8::SharedArrayBuffer> sab = v8::SharedArrayBuffer::New(isolate, std::move(store));
  return reinterpret_cast<napi_value>(*sab);
}
