/* Shared helpers of the dpfs native addon. */
#include "common.h"

#include <sys/uio.h>
#include <unistd.h>

napi_value errno_error(napi_env env, int err, const char *syscall) {
  char msg[256];
  snprintf(msg, sizeof msg, "%s: %s", syscall, strerror(err));
  napi_value jmsg, jerr, jcode, jno, jsys;
  const char *name = strerrorname_np(err);
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &jmsg);
  napi_create_error(env, NULL, jmsg, &jerr);
  napi_create_string_utf8(env, name ? name : "EIO", NAPI_AUTO_LENGTH, &jcode);
  napi_create_int32(env, -err, &jno);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &jsys);
  napi_set_named_property(env, jerr, "code", jcode);
  napi_set_named_property(env, jerr, "errno", jno);
  napi_set_named_property(env, jerr, "syscall", jsys);
  return jerr;
}

napi_value throw_errno(napi_env env, int err, const char *syscall) {
  napi_throw(env, errno_error(env, err, syscall));
  return NULL;
}

napi_value close_and_throw(napi_env env, int fd, const char *syscall) {
  int e = errno;
  close(fd);
  return throw_errno(env, e, syscall);
}

void call_back(napi_env env, napi_ref callback, napi_async_context context, size_t argc, const napi_value *argv) {
  napi_value cb, recv, result;
  napi_get_reference_value(env, callback, &cb);
  napi_get_global(env, &recv); /* make_callback needs an object receiver */
  /* make_callback drains microtasks afterwards, so promise chains started here run now. */
  if (napi_make_callback(env, context, recv, cb, argc, argv, &result) == napi_pending_exception) {
    /* A throwing callback is reported like any uncaught exception, not lost. */
    napi_value exc;
    napi_get_and_clear_last_exception(env, &exc);
    napi_fatal_exception(env, exc);
  }
}

napi_value int32_value(napi_env env, int32_t n) {
  napi_value v;
  napi_create_int32(env, n, &v);
  return v;
}

char *get_string(napi_env env, napi_value v) {
  size_t len = 0;
  if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) return NULL;
  char *s = malloc(len + 1);
  if (!s) return NULL;
  if (napi_get_value_string_utf8(env, v, s, len + 1, &len) != napi_ok) {
    free(s);
    return NULL;
  }
  return s;
}

uint32_t get_iovecs(napi_env env, napi_value array, struct iovec *iov, uint32_t max) {
  bool is_array;
  uint32_t n;
  if (napi_is_array(env, array, &is_array) != napi_ok || !is_array) return 0;
  if (napi_get_array_length(env, array, &n) != napi_ok || n == 0 || n > max) return 0;
  for (uint32_t i = 0; i < n; i++) {
    napi_value b;
    if (napi_get_element(env, array, i, &b) != napi_ok || napi_get_buffer_info(env, b, &iov[i].iov_base, &iov[i].iov_len) != napi_ok) return 0;
  }
  return n;
}
