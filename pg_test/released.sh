#!/usr/bin/env bash
# Released install scripts are never edited. Every release recorded in sql/releases (a version
# and the commit it was cut from, one per line) is rebuilt from that commit with `cargo pgrx
# schema`; the current version's must equal the installed script but for comments and blank
# lines (pgrx writes source file and line numbers into its comments; comment lines inside
# function bodies are left out too, so editing one goes unnoticed), and older ones are
# installed next to it so that the upgrade test can start from them. A release cut with an older
# pgrx may not build with the current cargo-pgrx: rebuild it with the cargo-pgrx of its time.
#   released.sh PG_CONFIG
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pg_config=$1
major=$("$pg_config" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
extdir="$("$pg_config" --sharedir)/extension"
current=$(sed -nE 's/^version = "([^"]+)"/\1/p' "$root/Cargo.toml" | head -1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A script without its comment lines, /* */ comments, trailing blanks and blank lines.
statements() {
    sed -E -e 's#/\*[^*]*\*/##g' -e '/^[[:space:]]*--/d' -e 's/[[:space:]]+$//' -e '/^$/d' "$1"
}
status=0
while read -r version commit; do
    case "$version" in ''|'#'*) continue ;; esac
    git -C "$root" cat-file -e "$commit^{commit}" || { echo "release $version: commit $commit is not in this clone" >&2; exit 1; }
    mkdir -p "$work/$version"
    git -C "$root" archive "$commit" | tar -x -C "$work/$version"
    # Every release builds into one target directory, where cargo names a workspace crate by its
    # path in the workspace and trusts its sources' times, which git archive sets to the commit's:
    # without this, a later release would link the crates an earlier one left there.
    find "$work/$version" -type f -exec touch {} +
    # A release cut before the major had its feature builds for it with the feature added:
    # its SQL is the same whatever the major.
    grep -q "^pg$major = " "$work/$version/Cargo.toml" \
        || sed -i -E "s/^pg15 = .*/&\npg$major = [\"pgrx\/pg$major\", \"pgrx-tests\/pg$major\"]/" "$work/$version/Cargo.toml"
    # The release's own sources, built into their own target directory (it caches the dependencies).
    (cd "$work/$version" && CARGO_TARGET_DIR="$root/target/released-pg$major" cargo pgrx schema "pg$major" --pg-config "$pg_config" \
        --out "$work/flex_sync--$version.sql" >"$work/$version.log" 2>&1) || { cat "$work/$version.log" >&2; exit 1; }
    if [ "$version" = "$current" ]; then
        statements "$work/flex_sync--$version.sql" >"$work/released.sql"
        statements "$extdir/flex_sync--$version.sql" >"$work/installed.sql"
        if cmp -s "$work/released.sql" "$work/installed.sql"; then
            echo "release $version ($commit): the install script is unchanged"
        else
            echo "release $version ($commit): the install script was edited after its release; bump the version and add sql/flex_sync--$version--<next>.sql" >&2
            diff "$work/released.sql" "$work/installed.sql" | head -40 >&2 || true
            status=1
        fi
    else
        install -m 644 "$work/flex_sync--$version.sql" "$extdir/"
        echo "release $version ($commit): installed for the upgrade test"
    fi
done < "$root/sql/releases"
exit "$status"
