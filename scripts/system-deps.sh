#!/bin/sh
# Makes sure what the tests start is installed: Mosquitto, Redis and Redis Sentinel, PostgreSQL's
# server (the tests make their own cluster with its initdb; the package's own cluster is not
# used) and Chromium (for the pages).
# Installs Debian's packages when they are missing and this machine can; otherwise says what to do.
set -eu

missing=""
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$missing mosquitto"
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing="$missing redis-server"
command -v redis-sentinel >/dev/null 2>&1 || [ -x /usr/bin/redis-sentinel ] || missing="$missing redis-sentinel"
# Debian keeps PostgreSQL's server binaries (initdb, postgres) off the PATH, in a directory per
# version.
command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
    || missing="$missing postgresql"
[ -x /usr/bin/chromium ] || missing="$missing chromium"
[ -z "$missing" ] && exit 0

echo "Installing the test servers:$missing"
if command -v apt-get >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; else sudo="none"; fi
    if [ "$sudo" != none ]; then
        $sudo apt-get update -qq
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing
        exit 0
    fi
fi
echo "The tests need$missing. Install them, e.g.:" >&2
echo "  Debian/Ubuntu: sudo apt-get install$missing" >&2
echo "  macOS:         brew install mosquitto redis postgresql chromium" >&2
exit 1
