#!/usr/bin/env bash
# PostgreSQL 17, which Debian 12 does not package: a Debian 13 (trixie) root with PostgreSQL 17,
# its server headers and pg_cron, made with debootstrap the first time and kept in
# /var/cache/flex_sync/trixie (a second run skips it). Debian 13's binaries need its glibc, so
# the server and the build run inside the root, with the host's Rust toolchain and this
# repository bind-mounted at the same paths; builds go to target/pg17.
#   pg17.sh test            the whole test suite on PostgreSQL 17 (test.sh inside the root)
#   pg17.sh package [DIR]   the release package for PostgreSQL 17 (package.sh inside the root)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
what=${1:?test or package}
cache=/var/cache/flex_sync
tree=$cache/trixie
mirror=$(sed -nE 's#^URIs: (https?://[^ ]*/debian)$#\1#p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
packages="postgresql-17 postgresql-server-dev-17 postgresql-client-17 postgresql-17-cron clang libclang-dev pkg-config"
packages="$packages libssl-dev gcc libc6-dev ca-certificates sudo procps git"
mounted=()
release() {
    local i
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null || true; done
    mounted=()
}
trap release EXIT
mount_into() {  # mount_into TREE SOURCE TARGET [proc]
    mkdir -p "$1$3"
    if [ "${4:-}" = proc ]; then mount -t proc proc "$1$3"; else mount --bind "$2" "$1$3"; fi
    mounted+=("$1$3")
}
if [ ! -d "$tree" ]; then
    command -v debootstrap >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
    rm -rf "$tree.partial"
    mkdir -p "$cache"
    echo "pg17: making the Debian 13 root (about a minute)"
    debootstrap --variant=minbase trixie "$tree.partial" "${mirror:-http://deb.debian.org/debian}" >"$cache/debootstrap.log" 2>&1 \
        || { tail -n 20 "$cache/debootstrap.log" >&2; exit 1; }
    # Packages must not start services in the root.
    printf '#!/bin/sh\nexit 101\n' >"$tree.partial/usr/sbin/policy-rc.d"
    chmod +x "$tree.partial/usr/sbin/policy-rc.d"
    cp /etc/resolv.conf "$tree.partial/etc/resolv.conf"
    mount_into "$tree.partial" proc /proc proc
    chroot "$tree.partial" sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $packages" \
        >"$cache/apt.log" 2>&1 || { tail -n 20 "$cache/apt.log" >&2; exit 1; }
    release
    mv "$tree.partial" "$tree"
fi
cp /etc/resolv.conf /etc/hosts "$tree/etc/"
mount_into "$tree" proc /proc proc
mount_into "$tree" /dev /dev
mount_into "$tree" /dev/shm /dev/shm
mount_into "$tree" "$root" "$root"
mount_into "$tree" "$HOME/.cargo" "$HOME/.cargo"
mount_into "$tree" "${RUSTUP_HOME:-$HOME/.rustup}" "${RUSTUP_HOME:-$HOME/.rustup}"
case "$what" in
test) command="bash pg_test/test.sh" ;;
package) command="bash pg_test/package.sh ${2:-$root/target/packages}" ;;
*) echo "pg17.sh: test or package, not $what" >&2; exit 2 ;;
esac
chroot "$tree" /usr/bin/env -i HOME="$HOME" PATH="$HOME/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}" CARGO_TARGET_DIR="$root/target/pg17" CI="${CI:-}" \
    FLEX_SYNC_PG_CONFIG=/usr/lib/postgresql/17/bin/pg_config FLEX_SYNC_INNER=1 \
    bash -c "cd '$root' && $command"
