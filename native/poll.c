#include "common.h"

#include <uv.h>

/*
 * Readiness polling of a file descriptor on the calling thread's event loop
 * (works in worker threads too): watch(fd, callback) calls callback(status, events)
 * whenever fd is readable; the returned handle is passed to unwatch(). The fd must
 * be non-blocking; reading it is left to JS.
 */
typedef struct {
  /*
   * Allocated apart and freed by its close callback, which is libc's free: the close may
   * complete after a worker thread's env is gone and its copy of this addon unloaded, so
   * no code of ours may run then.
   */
  uv_poll_t *poll;
  napi_env env;
  napi_ref callback;
  napi_async_context context;
  int active; /* polling and calling back */
  int hooked; /* an env cleanup hook is registered */
} watcher_t;

static void close_poll(uv_poll_t *poll) {
  uv_close((uv_handle_t *)poll, (uv_close_cb)(void (*)(void))free);
}

static void env_cleanup(void *arg);

/*
 * Stops polling and releases the JS references at once, while the env is surely alive
 * (the uv handle's close completes later, maybe after the env is gone).
 */
static void watcher_stop(watcher_t *w) {
  if (!w->active) return;
  w->active = 0;
  napi_delete_reference(w->env, w->callback);
  napi_async_destroy(w->env, w->context);
  if (w->hooked) napi_remove_env_cleanup_hook(w->env, env_cleanup, w);
  w->hooked = 0;
  uv_poll_stop(w->poll);
  close_poll(w->poll);
  w->poll = NULL;
}

/* A worker thread ending with watches still active: stop them before its env goes. */
static void env_cleanup(void *arg) {
  watcher_t *w = arg;
  w->hooked = 0; /* this hook is running: nothing to remove */
  watcher_stop(w);
}

static void watcher_event(uv_poll_t *poll, int status, int events) {
  watcher_t *w = poll->data;
  if (!w->active) return;
  napi_env env = w->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value argv[2];
  napi_create_int32(env, status, &argv[0]);
  napi_create_int32(env, events, &argv[1]);
  call_back(env, w->callback, w->context, 2, argv);
  napi_close_handle_scope(env, scope);
}

/* The JS handle is collected (or its env torn down): stop watching if still, and free. */
static void watcher_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  watcher_t *w = data;
  watcher_stop(w);
  free(w);
}

napi_value js_watch(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd;
  if (argc != 2 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) {
    napi_throw_type_error(env, "EINVAL", "watch(fd, callback)");
    return NULL;
  }
  uv_loop_t *loop;
  CHECK(napi_get_uv_event_loop(env, &loop));
  watcher_t *w = calloc(1, sizeof *w);
  uv_poll_t *poll = malloc(sizeof *poll);
  if (!w || !poll) {
    free(w);
    free(poll);
    return throw_errno(env, ENOMEM, "watch");
  }
  w->env = env;
  int rc = uv_poll_init(loop, poll, fd);
  if (rc != 0) {
    free(w);
    free(poll);
    return throw_errno(env, -rc, "uv_poll_init");
  }
  w->poll = poll;
  poll->data = w;
  napi_value name;
  napi_create_string_utf8(env, "dpfs:watch", NAPI_AUTO_LENGTH, &name);
  napi_async_init(env, NULL, name, &w->context);
  napi_create_reference(env, argv[1], 1, &w->callback);
  w->active = 1;
  w->hooked = napi_add_env_cleanup_hook(env, env_cleanup, w) == napi_ok;
  rc = uv_poll_start(poll, UV_READABLE | UV_DISCONNECT, watcher_event);
  if (rc != 0) {
    watcher_stop(w);
    free(w);
    return throw_errno(env, -rc, "uv_poll_start");
  }
  napi_value handle;
  CHECK(napi_create_external(env, w, watcher_finalize, NULL, &handle));
  return handle;
}

napi_value js_unwatch(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  napi_valuetype t;
  if (argc != 1 || napi_typeof(env, argv[0], &t) != napi_ok || t != napi_external) {
    napi_throw_type_error(env, "EINVAL", "unwatch(handle)");
    return NULL;
  }
  watcher_t *w;
  CHECK(napi_get_value_external(env, argv[0], (void **)&w));
  watcher_stop(w);
  return NULL;
}

