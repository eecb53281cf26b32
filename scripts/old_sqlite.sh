#!/usr/bin/env bash
# Builds SQLite 3.21.0, older than JetPack 4.6's 3.22 and like it without UPSERT (3.24), as a shared
# library that Python's sqlite3 loads instead of the system's when its directory is first on
# LD_LIBRARY_PATH (tests/ocap_service/test_old_sqlite.py); prints that directory. The source is the
# amalgamation inside npm's better-sqlite3 4.1.0 package (docs/architecture.md, "SQLite"), built once
# into the CI cache with JSON1, as Debian and Ubuntu build it.
set -euo pipefail
VERSION=3210000
D="${OCAP_CI_CACHE:-$HOME/.cache/ocap-ci}/sqlite-$VERSION"
mkdir -p "$D"
exec 9>"$D.lock" && flock 9
if [ ! -e "$D/.complete" ]; then
    command -v npm >/dev/null || { echo "old_sqlite.sh: npm is needed to fetch SQLite $VERSION's source" >&2; exit 1; }
    command -v cc >/dev/null || { echo "old_sqlite.sh: a C compiler (cc) is needed to build SQLite $VERSION" >&2; exit 1; }
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && npm pack --silent better-sqlite3@4.1.0 >/dev/null)
    tar xzf "$tmp/better-sqlite3-4.1.0.tgz" -C "$tmp" "package/deps/sqlite-autoconf-$VERSION.tar.gz"
    tar xzf "$tmp/package/deps/sqlite-autoconf-$VERSION.tar.gz" -C "$tmp"
    cc -O1 -shared -fPIC -DSQLITE_ENABLE_JSON1 -DSQLITE_THREADSAFE=1 -o "$D/libsqlite3.so.0" \
        "$tmp/sqlite-autoconf-$VERSION/sqlite3.c" -lpthread -ldl -lm
    touch "$D/.complete"
fi
echo "$D"
