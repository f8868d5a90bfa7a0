#!/bin/sh
# Prepares a fresh Debian machine for dpfs and builds it; safe to run again.
#   scripts/setup.sh   the packages the daemon, its tests and benchmarks need, npm dependencies, build
set -eu
cd "$(dirname "$0")/.."

# g++, make, liburing-dev: the native addon (C, one C++ file, io_uring); fuse3: the FUSE
# userspace tools; fio, stress-ng, sqlite3, git, attr, acl, rsync, python3: test workloads;
# bindfs: a FUSE file system to export (and a benchmark reference); qemu-system-x86,
# linux-image-amd64, busybox-static, cpio: the virtio-fs guest.
pkgs="g++ make liburing-dev fuse3 fio stress-ng sqlite3 git attr acl rsync python3 util-linux bindfs qemu-system-x86 linux-image-amd64 busybox-static cpio"

missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "dpfs setup: installing$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    echo "dpfs setup: missing Debian packages:$missing (install them as root)" >&2
    exit 1
  fi
fi

if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
npm run --silent build
