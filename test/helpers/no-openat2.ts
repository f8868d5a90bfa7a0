/**
 * Imported first by tests of kernels before 5.6: the native addon, loaded after this, then
 * answers openat2 with ENOSYS as such a kernel would.
 */
process.env.DPFS_NO_OPENAT2 = '1';
