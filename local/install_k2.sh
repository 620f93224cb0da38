#!/usr/bin/env bash
# Builds k2 (https://github.com/k2-fsa/k2) from source against the torch of the virtual
# environment, CPU or CUDA, and installs it into that environment. k2-fsa's own wheels lag torch
# releases and PyPI has none for a current torch, so users of a current torch build it.
#
# Where the source comes from: --source DIR (a k2 source tree, e.g. an unpacked release or a
# checkout you made) or, without it, a git clone of https://github.com/k2-fsa/k2 at --ref.
# The only other piece it needs is pybind11, from its PyPI source package (pinned version and
# sha256 below, the version torch itself bundles). A CUDA build also needs moderngpu, which
# k2's CMake fetches (hash-pinned) unless --moderngpu DIR gives an unpacked copy.
#
# The build is cached outside the work tree in
#   ${XDG_CACHE_HOME:-~/.cache}/xlsr-toolkit/k2-<source>-torch<version>-<cpu|cuXY>-py<X.Y>/
# (<source>: the --ref, the commit of a clean git checkout given with --source, or a hash of the
# source tree's files), so another clone on the same machine only copies a few files.
#
# Edits applied to the build's copy of the source (never to DIR itself):
#   1. k2/CMakeLists.txt: `include(kaldifeat)` and `add_subdirectory(torch)` are commented out.
#      k2/torch is the optional C++-only decoding API (not used from Python); configuring it
#      downloads kaldifeat from GitHub.
#   2. (CUDA only) CMakeLists.txt: `cuda_select_nvcc_arch_flags(K2_COMPUTE_ARCH_FLAGS)` gets the
#      architecture list of --cuda-arch instead of compiling a probe program.
# Build flags: -DCMAKE_CXX_STANDARD=17 (torch >= 2.1 headers need C++17), K2_ENABLE_TESTS and
# K2_ENABLE_BENCHMARK off, pybind11 from its sdist through FETCHCONTENT_SOURCE_DIR_PYBIND11,
# -ffile-prefix-map so the binaries carry no build path; target `_k2` only. A CPU build names
# torch's CPU libraries itself (TORCH_LIBRARY, TORCH_LIBRARIES, TORCH_CXX_FLAGS with torch's C++
# ABI) instead of find_package(Torch), which for a CUDA wheel of torch demands a CUDA toolkit even
# when k2 does not use CUDA; such a k2 runs with the CPU and the CUDA wheels of that torch version.
# Installed: site-packages/k2/ (Python package), _k2*.so and libk2*.so beside it (RUNPATH set to
# $ORIGIN with patchelf when it is installed),
# and a k2-<version>.dist-info, so `pip uninstall k2` removes it.
#
# Usage: local/install_k2.sh [--source DIR | --ref REF] [--cuda true] [--cuda-arch "8.0 9.0"] [--jobs N]
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

source=                     # a k2 source tree (no download of k2 at all)
ref=a741ae88abc6995345aa166464a239b7d270dd4c   # k2 commit of 2025-07-14 (k2 1.24.4), tested with torch 2.11.0
repo=https://github.com/k2-fsa/k2
cuda=false                  # true: build with CUDA (needs CUDA_TOOLKIT_ROOT_DIR or nvcc on PATH)
cuda_arch=auto              # CUDA compute capabilities, e.g. "8.0 9.0"; auto: those of the visible GPUs
moderngpu=                  # CUDA: an unpacked moderngpu source (offline builds); empty: k2's CMake fetches it
venv=$top/.venv
jobs=$(nproc)
pybind11_version=3.0.1      # the pybind11 bundled with torch 2.11 (ABI tag of the module)
pybind11_sha256=9c0f40056a016da59bab516efb523089139fcc6f2ba7e4930854c61efb932051  # pybind11-3.0.1.tar.gz on PyPI
pybind11_sdist=             # a local pybind11-<version>.tar.gz instead of downloading it
force=false
help_message="Usage: local/install_k2.sh [options]
  Builds k2 from source against .venv's torch (CPU, or CUDA with --cuda true) and installs it
  into the venv. The build is cached (keyed on k2 source, torch version, CUDA), so a second
  clone on this machine installs it in seconds.
Options (default):
  --source DIR            k2 source tree to build (default: git clone $repo at --ref)
  --ref REF               k2 tag or commit to clone ($ref)
  --cuda true|false       build with CUDA ($cuda); CUDA_TOOLKIT_ROOT_DIR selects the toolkit
  --cuda-arch \"X.Y ...\"   compute capabilities ($cuda_arch: those of the visible GPUs)
  --moderngpu DIR         unpacked moderngpu source for offline CUDA builds
  --venv DIR              virtual environment to install into ($venv)
  --jobs N                parallel compile jobs ($jobs)
  --pybind11-sdist FILE   local pybind11-$pybind11_version.tar.gz instead of downloading it from PyPI
  --force true            rebuild even when the cache has this build"
. "$top/local/parse_options.sh"

step=""
log_file=
trap 'rc=$?; [ $rc -ne 0 ] && echo "install_k2.sh: FAILED at step: $step (exit $rc)${log_file:+; the build log is $log_file}" >&2' EXIT
log() { echo "[install_k2] $*"; }
die() { echo "install_k2.sh: $*" >&2; exit 1; }

step="check the build tools"
for tool in cmake make g++ git; do
  command -v $tool >/dev/null 2>&1 || die "$tool not found; install it (apt-get install $tool)"
done
python=$venv/bin/python
[ -x "$python" ] || die "$python not found; run local/install.sh first (or give --venv DIR)"

step="read torch from $venv"
read -r torch_version torch_cuda py_version torch_dir site_dir torch_abi < <(env -u PYTHONPATH "$python" -c '
import os, sys, sysconfig, torch
print(torch.__version__, torch.version.cuda or "none", "%d.%d" % sys.version_info[:2],
      os.path.dirname(torch.__file__), sysconfig.get_paths()["purelib"], int(torch._C._GLIBCXX_USE_CXX11_ABI))') \
  || die "$python cannot import torch; run local/install.sh first"
log "torch $torch_version (CUDA ${torch_cuda/none/-}), Python $py_version, in $venv"

step="check CUDA"
tl=$torch_dir/lib
cmake_cuda=(-DK2_WITH_CUDA=OFF "-DTORCH_LIBRARY=$tl/libtorch.so" "-DTORCH_LIBRARIES=$tl/libtorch.so;$tl/libtorch_cpu.so;$tl/libc10.so"
            "-DTORCH_CXX_FLAGS=-D_GLIBCXX_USE_CXX11_ABI=$torch_abi")
variant=cpu
if [ "$cuda" = true ]; then
  [ "$torch_cuda" != none ] || die "--cuda true: the venv's torch $torch_version is a CPU build; install a CUDA torch"
  cuda_root=${CUDA_TOOLKIT_ROOT_DIR:-}
  [ -n "$cuda_root" ] || { nvcc=$(command -v nvcc || true); [ -n "$nvcc" ] && cuda_root=$(dirname "$(dirname "$nvcc")"); }
  [ -n "$cuda_root" ] && [ -x "$cuda_root/bin/nvcc" ] \
    || die "--cuda true: no CUDA toolkit found; set CUDA_TOOLKIT_ROOT_DIR=/usr/local/cuda-$torch_cuda (nvcc $torch_cuda, as torch)"
  nvcc_version=$("$cuda_root/bin/nvcc" --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')
  [ "$nvcc_version" = "$torch_cuda" ] \
    || die "--cuda true: $cuda_root has CUDA $nvcc_version but torch $torch_version was built with CUDA $torch_cuda; point CUDA_TOOLKIT_ROOT_DIR at CUDA $torch_cuda"
  if [ "$cuda_arch" = auto ]; then
    command -v nvidia-smi >/dev/null 2>&1 || die "--cuda-arch auto needs nvidia-smi (a visible GPU); give --cuda-arch \"8.0 9.0\""
    cuda_arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | sort -u | tr '\n' ' ')
    [ -n "${cuda_arch// /}" ] || die "--cuda-arch auto: nvidia-smi lists no GPU; give --cuda-arch \"8.0 9.0\""
  fi
  arch_list=$(echo $cuda_arch | tr ' ' ';')
  cmake_cuda=(-DK2_WITH_CUDA=ON "-DCUDA_TOOLKIT_ROOT_DIR=$cuda_root" "-DCMAKE_CUDA_COMPILER=$cuda_root/bin/nvcc"
              "-DK2_CUDA_ARCH_LIST=$arch_list")
  [ -n "$moderngpu" ] && cmake_cuda+=("-DFETCHCONTENT_SOURCE_DIR_MODERNGPU=$(cd "$moderngpu" && pwd)")
  variant=cu${torch_cuda//./}
  log "CUDA $nvcc_version in $cuda_root, architectures: $cuda_arch"
fi

step="identify the k2 source"
if [ -n "$source" ]; then
  [ -f "$source/k2/CMakeLists.txt" ] && [ -f "$source/CMakeLists.txt" ] \
    || die "--source $source: not a k2 source tree (no k2/CMakeLists.txt)"
  source=$(cd "$source" && pwd)
  if git -C "$source" rev-parse --is-inside-work-tree >/dev/null 2>&1 && [ -z "$(git -C "$source" status --porcelain)" ]; then
    label=$(git -C "$source" rev-parse HEAD)
  else  # not a (clean) checkout: the content of its files names it
    label=src-$(cd "$source" && find . -path ./.git -prune -o -type f -print | LC_ALL=C sort \
                | xargs -d '\n' sha256sum | sha256sum | cut -c1-16)
  fi
else
  label=$ref
fi
key=k2-${label//\//_}-torch${torch_version}-${variant}-py${py_version}
cache_root=${XDG_CACHE_HOME:-$HOME/.cache}/xlsr-toolkit
cache=$cache_root/$key
log "build: $key${source:+ (from $source)}"

if [ "$force" = true ] || [ ! -f "$cache/site/.complete" ]; then
  work=$cache.build.$$
  rm -rf "$work"
  mkdir -p "$work"
  log_file=$work/build.log
  : > "$log_file"
  # The work dir is removed on failure too, except its log, kept beside the cache.
  trap 'rc=$?; if [ $rc -ne 0 ]; then mkdir -p "$cache_root"; cp "$log_file" "$cache.failed.log" 2>/dev/null || true;
        rm -rf "$work"; echo "install_k2.sh: FAILED at step: $step (exit $rc); the build log is $cache.failed.log" >&2; fi' EXIT

  step="k2 source into $work/src"
  if [ -n "$source" ]; then
    log "copying $source"
    mkdir -p "$work/src"
    tar -C "$source" --exclude=./.git -cf - . | tar -C "$work/src" -xf -
  else
    log "cloning $repo at $ref"
    git clone -q "$repo" "$work/src" >> "$log_file" 2>&1 \
      || die "cannot clone $repo (offline?); get the k2 source another way and pass --source DIR"
    git -C "$work/src" -c advice.detachedHead=false checkout -q "$ref" >> "$log_file" 2>&1 \
      || die "--ref $ref: no such tag or commit in $repo"
  fi

  step="pybind11 $pybind11_version source package"
  if [ -z "$pybind11_sdist" ]; then
    pybind11_sdist=$cache_root/downloads/pybind11-$pybind11_version.tar.gz
    if [ ! -f "$pybind11_sdist" ]; then
      mkdir -p "$(dirname "$pybind11_sdist")"
      log "downloading pybind11-$pybind11_version.tar.gz from PyPI"
      "$python" "$top/local/fetch_sdist.py" pybind11 "$pybind11_version" "$pybind11_sdist"
    fi
  fi
  [ -f "$pybind11_sdist" ] || die "--pybind11-sdist $pybind11_sdist: not found"
  echo "$pybind11_sha256  $pybind11_sdist" | sha256sum -c --status \
    || die "$pybind11_sdist does not have the sha256 of pybind11-$pybind11_version.tar.gz on PyPI ($pybind11_sha256); delete it and run again"
  mkdir -p "$work/pybind11"
  tar -xzf "$pybind11_sdist" -C "$work/pybind11" --strip-components 1
  [ -f "$work/pybind11/tools/pybind11Tools.cmake" ] || [ -f "$work/pybind11/tools/pybind11Common.cmake" ] \
    || die "$pybind11_sdist has no CMake support files (tools/)"

  step="edit the source copy (see the top of this script)"
  grep -q '^ *include(kaldifeat)' "$work/src/k2/CMakeLists.txt" \
    || die "$work/src/k2/CMakeLists.txt has no include(kaldifeat) line: this k2 version needs another edit; see the comment at the top of $0"
  sed -i -e 's/^\( *\)include(kaldifeat)/\1# include(kaldifeat)  # xlsr-toolkit: k2\/torch (C++ API) not built/' \
         -e 's/^\( *\)add_subdirectory(torch)/\1# add_subdirectory(torch)  # xlsr-toolkit/' "$work/src/k2/CMakeLists.txt"
  if [ "$cuda" = true ]; then
    grep -q 'cuda_select_nvcc_arch_flags(K2_COMPUTE_ARCH_FLAGS)' "$work/src/CMakeLists.txt" \
      || die "$work/src/CMakeLists.txt: no cuda_select_nvcc_arch_flags(K2_COMPUTE_ARCH_FLAGS) to give the architectures to"
    sed -i 's/cuda_select_nvcc_arch_flags(K2_COMPUTE_ARCH_FLAGS)/cuda_select_nvcc_arch_flags(K2_COMPUTE_ARCH_FLAGS ${K2_CUDA_ARCH_LIST})/' \
      "$work/src/CMakeLists.txt"
  fi

  step="cmake configure (see the build log)"
  log "configuring (CMake; log: $log_file)"
  mkdir -p "$work/build"
  prefix_map="-ffile-prefix-map=$work/src=k2 -ffile-prefix-map=$work/pybind11=pybind11 -ffile-prefix-map=$work/build=build"
  prefix_map+=" -ffile-prefix-map=$torch_dir=torch"
  (cd "$work/build" && cmake "$work/src" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_STANDARD=17 \
      -DK2_ENABLE_TESTS=OFF -DK2_ENABLE_BENCHMARK=OFF "${cmake_cuda[@]}" \
      "-DPYTHON_EXECUTABLE=$python" "-DPython_EXECUTABLE=$python" \
      "-DFETCHCONTENT_SOURCE_DIR_PYBIND11=$work/pybind11" "-DCMAKE_CXX_FLAGS=$prefix_map") >> "$log_file" 2>&1

  step="compile _k2 (make -j$jobs; see the build log)"
  log "compiling with $jobs jobs (about 15 minutes on 2 CPU cores for a CPU build)"
  t0=$(date +%s)
  (cd "$work/build" && make -j"$jobs" _k2) >> "$log_file" 2>&1
  build_seconds=$(( $(date +%s) - t0 ))

  step="assemble the package in $work/site"
  mkdir -p "$work/site"
  cp -r "$work/src/k2/python/k2" "$work/site/k2"
  find "$work/site/k2" -name __pycache__ -prune -exec rm -rf {} +
  cp "$work/build/lib/"_k2*.so "$work/build/lib/"libk2*.so "$work/site/"
  # CMake's build-tree RUNPATH names the build dir and the venv's torch/lib; the libraries need only
  # each other ($ORIGIN; torch's are loaded by `import torch` before _k2)
  if command -v patchelf >/dev/null 2>&1; then
    for f in "$work/site/"*.so; do patchelf --set-rpath '$ORIGIN' "$f"; done
  else
    log "note: patchelf not found, so the libraries' RUNPATH keeps the build paths (harmless; apt-get install patchelf)"
  fi
  version=$(sed -n 's/^set(K2_VERSION "\(.*\)")/\1/p' "$work/src/CMakeLists.txt")
  cat > "$work/site/build-info.txt" <<EOF
k2 $version, source: ${source:-$repo at $ref} ($label)
torch $torch_version, Python $py_version, $variant$( [ "$cuda" = true ] && echo " (architectures $cuda_arch)" )
compiled in $build_seconds s with $jobs jobs on $(nproc) cores ($(uname -m), $(date -u '+%Y-%m-%d'))
EOF
  echo "$version" > "$work/site/.version"
  touch "$work/site/.complete"
  rm -rf "$cache"
  mkdir -p "$cache"
  mv "$work/site" "$cache/site"
  mv "$log_file" "$cache/build.log"
  rm -rf "$work"
  log_file=$cache/build.log
  trap 'rc=$?; [ $rc -ne 0 ] && echo "install_k2.sh: FAILED at step: $step (exit $rc); the build log is $log_file" >&2' EXIT
  log "built in $build_seconds s; cached in $cache"
else
  log "using the cached build in $cache ($(head -1 "$cache/site/build-info.txt"))"
fi

step="install into $site_dir"
version=$(cat "$cache/site/.version")
if env -u PYTHONPATH "$python" -m pip show -q k2 >/dev/null 2>&1; then
  log "removing the k2 installed before"
  env -u PYTHONPATH "$python" -m pip uninstall -q -y k2
fi
dist=$site_dir/k2-$version.dist-info
rm -rf "$site_dir/k2" "$dist"
cp -r "$cache/site/k2" "$site_dir/k2"
files=(k2)
for f in "$cache/site/"*.so; do cp "$f" "$site_dir/"; files+=("$(basename "$f")"); done
mkdir -p "$dist"
printf 'Metadata-Version: 2.1\nName: k2\nVersion: %s\nSummary: k2 built from source by xlsr-toolkit local/install_k2.sh (%s)\nLicense: Apache-2.0\n' \
  "$version" "$key" > "$dist/METADATA"
echo "xlsr-toolkit-install_k2" > "$dist/INSTALLER"
cp "$cache/site/build-info.txt" "$dist/build-info.txt"
{
  (cd "$site_dir" && find "${files[@]}" -type f | LC_ALL=C sort | sed 's/$/,,/')
  for f in METADATA INSTALLER build-info.txt RECORD; do echo "k2-$version.dist-info/$f,,"; done
} > "$dist/RECORD"

step="check: import k2 and decode one utterance"
env -u PYTHONPATH "$python" - "$site_dir" <<'PY'
import sys, torch, k2
assert k2.__file__.startswith(sys.argv[1]), f"k2 imported from {k2.__file__}, not from the venv"
# CTC topology of 3 tokens intersected with a 4-frame utterance: the best path is the argmax one.
lp = torch.tensor([[[0.1, 2.0, 0.0], [0.1, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 2.0]]]).log_softmax(-1)
dense = k2.DenseFsaVec(lp, torch.tensor([[0, 0, 4]], dtype=torch.int32))
lat = k2.intersect_dense(k2.arc_sort(k2.ctc_topo(2)), dense, output_beam=10.0)
best = k2.shortest_path(lat, use_double_scores=True)
labels = [int(x) for x in best[0].aux_labels.tolist() if x > 0]
assert labels == [1, 2], labels
from k2.version import __version__

print(f"[install_k2] k2 {__version__} imports from {k2.__file__} and decodes")
PY
log "done: k2 $version in $venv ($(sed -n 2p "$cache/site/build-info.txt"))"
trap - EXIT
