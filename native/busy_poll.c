#include "common.h"

#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <time.h>
#include <uv.h>

/*
 * Adaptive busy polling of the calling thread's event loop, as QEMU's iothreads do
 * (poll-max-ns): just before the loop would sleep, spin for a while asking whether any of
 * its descriptors became ready, so that a request arriving soon after the last reply is
 * taken without the sleep and wake-up (in a VM, an IPI and a halt exit on each side, several
 * µs apiece). The spin asks poll(2) about the loop's epoll descriptor, which consumes no
 * event; it never runs when the loop has work due now (immediates, pending callbacks) nor
 * past its next timer, and it never sleeps itself: the loop does, in its own wait. It is
 * sized by what waits have been lately (the loop's own idle time measures them): it grows
 * while the waits end within the maximum and shrinks to nothing while they do not, so an
 * idle daemon sleeps at once.
 *
 * busyPoll(maxUs) sets the maximum for the calling thread's loop (0: off);
 * busyPollStats() gives [hits, misses, spinNs, currentNs] for that loop.
 */
typedef struct {
  uv_prepare_t prepare; /* first: see busy_cleanup */
  uint64_t max_ns;
  uint64_t cur_ns;
  double hits;   /* waits a spin caught */
  double misses; /* spins that ran out and slept */
  double spin_ns;
  int closing;
  /* The loop is (or was) in its own wait after a spin of spun_before_wait ns. */
  int waiting;
  uint64_t spun_before_wait;
  uint64_t idle_before_wait; /* the loop's idle time (ns) then */
} busy_t;

/* Below this a spin is not worth a system call per turn: stop spinning. */
#define MIN_SPIN_NS 2000u

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Sizes the next spin from how long the last wait was, spin included. */
static void adapt(busy_t *b, uint64_t waited) {
  if (waited > b->max_ns) {
    b->cur_ns /= 2; /* idle stretches: spin less */
    if (b->cur_ns < MIN_SPIN_NS) b->cur_ns = 0;
  } else {
    /* a longer spin would have caught it: grow (at least to what this wait took) */
    uint64_t grown = b->cur_ns ? b->cur_ns * 2 : MIN_SPIN_NS;
    uint64_t need = waited + waited / 4;
    if (grown < need) grown = need;
    b->cur_ns = grown < b->max_ns ? grown : b->max_ns;
  }
}

static void before_sleep(uv_prepare_t *h) {
  busy_t *b = h->data;
  uv_loop_t *loop = h->loop;
  if (b->waiting) {
    /*
     * The last turn slept in the loop's own wait (never in ours: a descriptor the loop starts
     * watching joins its epoll set only in that wait, so a sleep of ours could miss it). The
     * loop counts the time it spent there.
     */
    b->waiting = 0;
    adapt(b, b->spun_before_wait + (uv_metrics_idle_time(loop) - b->idle_before_wait));
  }
  int timeout_ms = uv_backend_timeout(loop);
  if (timeout_ms == 0 || b->max_ns == 0) return; /* work due now, or off */
  uint64_t spun = 0;
  if (b->cur_ns > 0) {
    struct pollfd p = {.fd = uv_backend_fd(loop), .events = POLLIN};
    uint64_t limit = b->cur_ns;
    if (timeout_ms > 0 && (uint64_t)timeout_ms * 1000000u < limit) limit = (uint64_t)timeout_ms * 1000000u;
    uint64_t start = now_ns();
    for (;;) {
      int ready = poll(&p, 1, 0) > 0;
      spun = now_ns() - start;
      if (ready) {
        b->hits++;
        b->spin_ns += (double)spun;
        return; /* the loop's own wait returns at once */
      }
      if (spun >= limit) break;
      sched_yield(); /* a thread waiting for this CPU (maybe the one we wait for) runs first */
    }
    b->misses++;
    b->spin_ns += (double)spun;
  }
  b->waiting = 1;
  b->spun_before_wait = spun;
  b->idle_before_wait = uv_metrics_idle_time(loop);
}

/* One per env (the main thread, each worker): stopped with it. */
static void busy_cleanup(void *arg) {
  busy_t *b = arg;
  if (b->closing) return;
  b->closing = 1;
  uv_prepare_stop(&b->prepare);
  /*
   * The close completes after the env's cleanup, when a worker thread's copy of this addon
   * may be unloaded already: the callback must not be code of ours. The handle is the first
   * member, so freeing it frees b.
   */
  uv_close((uv_handle_t *)&b->prepare, (uv_close_cb)(void (*)(void))free);
}

static busy_t *busy_of(napi_env env, int create) {
  busy_t *b = NULL;
  if (napi_get_instance_data(env, (void **)&b) != napi_ok) return NULL;
  if (b || !create) return b;
  uv_loop_t *loop;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) return NULL;
  b = calloc(1, sizeof *b);
  if (!b) return NULL;
  /* The loop's idle time measures the waits (Node turns this on too, for its loop utilization). */
  uv_loop_configure(loop, UV_METRICS_IDLE_TIME);
  uv_prepare_init(loop, &b->prepare);
  b->prepare.data = b;
  uv_unref((uv_handle_t *)&b->prepare); /* never keeps the loop alive by itself */
  uv_prepare_start(&b->prepare, before_sleep);
  if (napi_add_env_cleanup_hook(env, busy_cleanup, b) != napi_ok) {
    busy_cleanup(b);
    return NULL;
  }
  if (napi_set_instance_data(env, b, NULL, NULL) != napi_ok) {
    napi_remove_env_cleanup_hook(env, busy_cleanup, b); /* b is freed once closed */
    busy_cleanup(b);
    return NULL;
  }
  return b;
}

napi_value js_busy_poll(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  double us;
  if (argc != 1 || napi_get_value_double(env, argv[0], &us) != napi_ok || !(us >= 0) || us > 1e6) {
    napi_throw_range_error(env, "EINVAL", "busyPoll(maxUs): 0 to 1000000");
    return NULL;
  }
  busy_t *b = busy_of(env, us > 0);
  if (us > 0 && !b) return throw_errno(env, ENOMEM, "busyPoll");
  if (b) {
    b->max_ns = (uint64_t)(us * 1000);
    if (b->cur_ns > b->max_ns) b->cur_ns = b->max_ns;
  }
  return NULL;
}

napi_value js_busy_poll_stats(napi_env env, napi_callback_info info) {
  (void)info;
  busy_t *b = busy_of(env, 0);
  double v[4] = {0, 0, 0, 0};
  if (b) {
    v[0] = b->hits;
    v[1] = b->misses;
    v[2] = b->spin_ns;
    v[3] = (double)b->cur_ns;
  }
  napi_value arr;
  CHECK(napi_create_array_with_length(env, 4, &arr));
  for (uint32_t i = 0; i < 4; i++) {
    napi_value n;
    CHECK(napi_create_double(env, v[i], &n));
    CHECK(napi_set_element(env, arr, i, n));
  }
  return arr;
}
