/**
 * Process settings that must precede everything else. Backends do their blocking system
 * calls on libuv's pool, which is sized once, at first use: make it wide enough for many
 * requests in flight (the default is 4).
 */
process.env.UV_THREADPOOL_SIZE ??= '16';
