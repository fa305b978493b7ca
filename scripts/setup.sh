#!/usr/bin/env bash
# Installs what Keel's tests and benchmark need on a fresh Debian machine: the real NBD clients, Redis,
# nbdkit and s3backer (for baselines), then the npm dependencies. Safe to run again.
set -euo pipefail
packages=(fio nbdkit libnbd-bin qemu-utils redis-server s3backer)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# This machine's npm mirror lacks some other platforms' optional packages (they 404): `npm install` skips
# them, but `npm ci` refuses a lock file that lists them. Then `npm install` installs the same locked versions.
if ! npm ci --no-audit --no-fund; then
  echo "setup: npm ci refused the lock file; installing the locked versions with npm install" >&2
  npm install --no-audit --no-fund
fi
