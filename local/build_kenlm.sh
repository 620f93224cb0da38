#!/usr/bin/env bash
# Builds KenLM's lmplz (and build_binary) from the kenlm source package on PyPI, whose sdist
# carries lm/builder, against the system's Boost, and copies them into --bin-dir.
# The build is cached outside the work tree (keyed on the kenlm version), so another clone on
# the same machine only copies two files. Needs g++, make, cmake and Boost (program_options,
# system, thread), zlib, bz2 and lzma headers: local/install.sh installs them with apt when root.
# Usage: local/build_kenlm.sh --bin-dir DIR [--version V] [--sdist FILE.tar.gz]
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

bin_dir=
version=0.3.0
sha256=c4628bb9fb63c8a6f9240035b8b037385cfc404cb72e933cf48878291edac1e8  # of kenlm-0.3.0.tar.gz on PyPI
sdist=                     # a local kenlm-<version>.tar.gz instead of downloading it
max_order=6
help_message="Usage: local/build_kenlm.sh --bin-dir DIR [--version $version] [--sdist FILE] [--max-order $max_order]
  Builds lmplz and build_binary from the kenlm sdist (PyPI) and copies them into DIR."
. "$top/local/parse_options.sh"
[ -n "$bin_dir" ] || { echo "build_kenlm.sh: --bin-dir is required" >&2; exit 1; }

cache=${XDG_CACHE_HOME:-$HOME/.cache}/xlsr-toolkit/kenlm-$version-order$max_order
step=""
trap 'rc=$?; [ $rc -ne 0 ] && echo "build_kenlm.sh: FAILED at step: $step (exit $rc); the build log is $cache/build.log" >&2' EXIT
log() { echo "[build_kenlm] $*"; }

if [ ! -x "$cache/bin/lmplz" ]; then
  mkdir -p "$cache"
  for tool in g++ make cmake; do
    command -v $tool >/dev/null || { echo "build_kenlm.sh: $tool not found; install it (apt-get install $tool)" >&2; exit 1; }
  done
  step="kenlm $version source package"
  if [ -z "$sdist" ]; then
    sdist=$cache/kenlm-$version.tar.gz
    if [ ! -f "$sdist" ]; then
      log "downloading kenlm-$version.tar.gz from PyPI"
      python3 "$top/local/fetch_sdist.py" kenlm "$version" "$sdist"
    fi
    if [ "$version" = 0.3.0 ] && ! echo "$sha256  $sdist" | sha256sum -c --status; then
      rm -f "$sdist"
      echo "build_kenlm.sh: $sdist does not have the expected sha256; removed it, run again" >&2; exit 1
    fi
  fi
  step="unpack $sdist"
  rm -rf "$cache/src" "$cache/build"
  mkdir -p "$cache/src" "$cache/build"
  tar -xzf "$sdist" -C "$cache/src" --strip-components 1
  [ -f "$cache/src/lm/builder/lmplz_main.cc" ] || { echo "build_kenlm.sh: $sdist has no lm/builder/lmplz_main.cc" >&2; exit 1; }
  step="cmake (Boost, zlib, bz2, lzma)"
  log "building lmplz in $cache (about a minute on 2 cores)"
  (cd "$cache/build" && cmake ../src -DCMAKE_BUILD_TYPE=Release -DKENLM_MAX_ORDER=$max_order) > "$cache/build.log" 2>&1
  step="make lmplz build_binary"
  (cd "$cache/build" && make -j"$(nproc)" lmplz build_binary) >> "$cache/build.log" 2>&1
  mkdir -p "$cache/bin.tmp"
  cp "$cache/build/bin/lmplz" "$cache/build/bin/build_binary" "$cache/bin.tmp/"
  rm -rf "$cache/bin" "$cache/build" "$cache/src"
  mv "$cache/bin.tmp" "$cache/bin"
fi
step="install into $bin_dir"
mkdir -p "$bin_dir"
for b in lmplz build_binary; do
  cp "$cache/bin/$b" "$bin_dir/.$b.tmp" && mv "$bin_dir/.$b.tmp" "$bin_dir/$b"
done
"$bin_dir/lmplz" --help >/dev/null 2>&1 || true  # lmplz --help exits non-zero; it must at least load
ldd "$bin_dir/lmplz" | grep -q "not found" && { echo "build_kenlm.sh: $bin_dir/lmplz misses shared libraries (ldd)" >&2; exit 1; }
log "lmplz and build_binary (kenlm $version) in $bin_dir"
trap - EXIT
