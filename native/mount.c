/* mount(2) and umount2(2) for the /dev/fuse device. */
#include "common.h"

#include <sys/mount.h>

/* mount(source, target, fstype, flags, data) */
napi_value js_mount(napi_env env, napi_callback_info info) {
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
napi_value js_umount2(napi_env env, napi_callback_info info) {
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

