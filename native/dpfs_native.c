/*
 * dpfs native primitives: only what Node cannot do itself.
 * Each function is a thin, checked wrapper around one system call; errors are
 * thrown as JS Errors carrying `code` (errno name) and `errno` (number).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <node_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>

#define CHECK(call)                                                   \
  do {                                                                \
    if ((call) != napi_ok) {                                          \
      napi_throw_error(env, "EINVAL", "dpfs_native: bad arguments");  \
      return NULL;                                                    \
    }                                                                 \
  } while (0)

static napi_value throw_errno(napi_env env, int err, const char *syscall) {
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
  napi_throw(env, jerr);
  return NULL;
}

/* Copies a JS string argument into a malloc'd C string (caller frees). */
static char *get_string(napi_env env, napi_value v) {
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

/* mount(source, target, fstype, flags, data) */
static napi_value js_mount(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 5) {
    napi_throw_type_error(env, "EINVAL", "mount(source, target, fstype, flags, data)");
    return NULL;
  }
  uint32_t flags;
  CHECK(napi_get_value_uint32(env, argv[3], &flags));
  char *source = get_string(env, argv[0]);
  char *target = get_string(env, argv[1]);
  char *fstype = get_string(env, argv[2]);
  char *data = get_string(env, argv[4]);
  int rc = -1, err = EINVAL;
  if (source && target && fstype && data) {
    rc = mount(source, target, fstype, flags, data);
    err = errno;
  }
  free(source);
  free(target);
  free(fstype);
  free(data);
  if (rc != 0) return throw_errno(env, err, "mount");
  return NULL;
}

/* umount2(target, flags) */
static napi_value js_umount2(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 2) {
    napi_throw_type_error(env, "EINVAL", "umount2(target, flags)");
    return NULL;
  }
  uint32_t flags;
  CHECK(napi_get_value_uint32(env, argv[1], &flags));
  char *target = get_string(env, argv[0]);
  if (!target) return throw_errno(env, EINVAL, "umount2");
  int rc = umount2(target, (int)flags);
  int err = errno;
  free(target);
  if (rc != 0) return throw_errno(env, err, "umount2");
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"mount", NULL, js_mount, NULL, NULL, NULL, napi_default, NULL},
      {"umount2", NULL, js_umount2, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
