#!/usr/bin/env bash
# The README's commands. Run as root on Debian 12:
#   ./dev.sh up      set up the host, build, start warren
#   ./dev.sh test    set up the host, build, run the whole test suite
# Also: ./dev.sh build (host packages + binaries only), ./dev.sh bench.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$REPO"

GUEST_TARGET=x86_64-unknown-linux-gnu
GUEST_BIN="$REPO/target/$GUEST_TARGET/release/warren-guest"
# Debian packages the host needs. qemu-utils must come from the same QEMU
# release as qemu-system-x86: host_package_plan pins them together.
HOST_PACKAGES=(qemu-system-x86 qemu-utils mmdebstrap e2fsprogs dpkg apt ca-certificates curl python3 python3-venv fuse3 iproute2 nftables)
# Only the test suite needs a browser.
TEST_PACKAGES=(chromium)

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'dev.sh: %s\n' "$*" >&2; exit 1; }

need_root() {
  [ "$(id -u)" = 0 ] || die "run as root: building guest images (mmdebstrap, ext4 ownership) and installing packages need it"
}

# Where dpkg keeps its database. Overridable so that the install-plan test can
# ask what apt would do on a fresh machine (tests/install.rs) without touching
# this one: the plan is computed by exactly the code below.
DPKG_ADMINDIR="${WARREN_DPKG_ADMINDIR:-/var/lib/dpkg}"
APT_STATE_OPTS=(-o "Dir::State::status=$DPKG_ADMINDIR/status")

installed_version() { # PKG -> version installed, or nothing
  dpkg-query --admindir="$DPKG_ADMINDIR" -W -f='${Status} ${Version}' "$1" 2>/dev/null |
    awk '$1 == "install" && $3 == "installed" { print $4 }' || true
}

candidate_version() { # PKG -> the version apt would install
  apt-cache "${APT_STATE_OPTS[@]}" policy "$1" 2>/dev/null | awk '$1 == "Candidate:" { print $2 }' || true
}

# A version of PKG that apt can install and that was built from the same
# source upload as qemu-system-x86's version $2 (binNMUs add "+bN" to only
# some of the binaries: qemu-system-data has none).
same_upload_version() { # PKG VERSION -> version
  local pkg=$1 want=${2%+b[0-9]*} v
  for v in $(apt-cache "${APT_STATE_OPTS[@]}" madison "$pkg" 2>/dev/null | awk -F'|' '{ gsub(/ /, "", $2); print $2 }'); do
    [ "${v%+b[0-9]*}" = "$want" ] && { echo "$v"; return; }
  done
}

# The apt-get install arguments for the host: one per line, packages built
# from QEMU's source pinned to qemu-system-x86's candidate version. Debian 12
# machines may come with a newer qemu-utils from bookworm-backports, which
# Breaks: bookworm's qemu-system-common; apt will not resolve that by itself,
# so qemu-utils (and any other installed binary of the qemu source) is pinned
# to the release qemu-system-x86 comes from, downgraded when it is newer.
host_package_plan() {
  local installed candidate
  installed=$(installed_version qemu-system-x86)
  candidate=$(candidate_version qemu-system-x86)
  # Keep an installed QEMU when the rest of its family can match it; else
  # move the whole family to the candidate.
  if [ -n "$installed" ] && qemu_family_pins "$installed" >/dev/null; then
    qemu_family_pins "$installed"
  elif [ -n "$candidate" ] && [ "$candidate" != "(none)" ]; then
    qemu_family_pins "$candidate" ||
      die "the packages built from QEMU $candidate are not all available to apt; qemu-utils must match qemu-system-x86"
  else
    die "apt knows no qemu-system-x86 package; run apt-get update (Debian 12 main must be in the sources)"
  fi
  local pkg
  for pkg in "${HOST_PACKAGES[@]}" "$@"; do
    case "$pkg" in qemu-system-x86 | qemu-utils) ;; *) echo "$pkg" ;; esac
  done
}

# pkg=version for qemu-system-x86, qemu-utils and every other installed binary
# of the qemu source, all of QEMU upload $1; fails if one is not to be had.
qemu_family_pins() {
  local target=$1 family=(qemu-system-x86 qemu-utils) pkg v
  while read -r pkg; do
    [[ " ${family[*]} " == *" $pkg "* ]] || family+=("$pkg")
  done < <(dpkg-query --admindir="$DPKG_ADMINDIR" -W -f='${Status} ${Package} ${source:Package}\n' 2>/dev/null |
    awk '$1 == "install" && $3 == "installed" && $5 == "qemu" { print $4 }')
  for pkg in "${family[@]}"; do
    v=$(installed_version "$pkg")
    [ -n "$v" ] && [ "${v%+b[0-9]*}" = "${target%+b[0-9]*}" ] || v=$(same_upload_version "$pkg" "$target")
    [ -n "$v" ] || return 1
    echo "$pkg=$v"
  done
}

# Whether every wanted package is installed at the version the plan asks for.
plan_is_installed() {
  local arg pkg want have
  for arg in "$@"; do
    pkg=${arg%%=*}
    have=$(installed_version "$pkg")
    [ -n "$have" ] || return 1
    if [ "$arg" != "$pkg" ]; then want=${arg#*=}; [ "$have" = "$want" ] || return 1; fi
  done
}

apt_lists_present() {
  compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null
}

install_host_packages() {
  export DEBIAN_FRONTEND=noninteractive
  apt_lists_present || { log "fetching Debian's package lists (apt-get update)"; apt-get update -q >/dev/null; }
  local plan out
  out=$(host_package_plan "$@") || exit 1
  mapfile -t plan <<<"$out"
  if ! plan_is_installed "${plan[@]}"; then
    apt-get update -q >/dev/null
    out=$(host_package_plan "$@") || exit 1
    mapfile -t plan <<<"$out"
    local have_utils
    have_utils=$(installed_version qemu-utils)
    local want_utils
    want_utils=$(printf '%s\n' "${plan[@]}" | sed -n 's/^qemu-utils=//p')
    if [ -n "$have_utils" ] && [ "$have_utils" != "$want_utils" ]; then
      log "qemu-utils $have_utils is from another QEMU release than qemu-system-x86; installing $want_utils to match (a downgrade if it was newer)"
    fi
    log "installing Debian packages: ${plan[*]}"
    apt-get install -y -q --no-install-recommends --allow-downgrades "${plan[@]}" >/dev/null
  fi
  command -v cargo >/dev/null || die "cargo is not installed; install a Rust toolchain (rustup) first"
  if ! node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a==20&&b>=19)?0:1)' 2>/dev/null; then
    log "installing Node.js from Debian (the web console needs Node >= 20.19)"
    apt-get install -y -q nodejs npm >/dev/null || true
    node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a==20&&b>=19)?0:1)' ||
      die "Node.js >= 20.19 is needed to build the web console (found $(node --version 2>/dev/null || echo none))"
  fi
}

build_web() {
  log "building the web console (npm)"
  (cd "$REPO/web" && npm ci --no-audit --no-fund --loglevel=error && npm run build --silent)
}

build_guest() {
  log "building the guest agent (static)"
  CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked -p warren-guest --target "$GUEST_TARGET"
}

build_release() {
  build_guest
  build_web
  log "building warren (release)"
  cargo build --release --locked -p warren-cli -p warren-snapshot -p warren-bench
  install -m 0755 "$GUEST_BIN" "$REPO/target/release/warren-guest"
  put_on_path
}

# `warren` on root's PATH, as the README uses it. A symbolic link, so it is
# always this tree's latest build; warren finds its helpers (warren-memfs,
# warren-guest) beside the file the link resolves to.
put_on_path() {
  local link=/usr/local/bin/warren target="$REPO/target/release/warren"
  if [ "$(readlink "$link" 2>/dev/null)" != "$target" ]; then
    if [ -e "$link" ] && [ ! -L "$link" ]; then
      log "leaving $link alone (not a link made by dev.sh); run $target"
      return
    fi
    ln -sfn "$target" "$link.tmp.$$" && mv -Tf "$link.tmp.$$" "$link"
    log "linked $link -> $target"
  fi
}

cmd_up() {
  need_root
  install_host_packages
  build_release
  local warren="$REPO/target/release/warren"
  log "building the default guest image if needed (the first time takes about two minutes)"
  "$warren" images build debian
  log "starting warren (Ctrl-C stops it); in another terminal: warren create, warren ls, warren exec ID -- CMD"
  exec "$warren" up
}

cmd_test() {
  need_root
  install_host_packages "${TEST_PACKAGES[@]}"
  build_guest
  build_web
  export WARREN_GUEST_AGENT="$GUEST_BIN"
  # Tests keep their image cache apart from a running warren's.
  export WARREN_IMAGE_CACHE="${WARREN_IMAGE_CACHE:-/var/lib/warren/test-images}"
  export RUST_BACKTRACE=1
  log "running the Rust test suite (unit, integration with real VMs, API contract)"
  # The snapshot memory daemon must sit next to the test binaries' warren.
  cargo build --locked -p warren-snapshot --bin warren-memfs -p warren-bench --bin warren-bench
  cargo test --workspace --locked -- --test-threads=2
  export WARREN_BIN="$REPO/target/debug/warren"
  log "running the Python SDK tests against a live warren up"
  "$REPO/sdk/python/run-tests.sh"
  log "running the web console test in headless Chromium"
  (cd "$REPO/web" && npm run --silent test:e2e)
  log "running schemathesis against /openapi.json"
  "$REPO/scripts/schemathesis.sh" "$WARREN_BIN"
  log "checking that no VM or sandbox directory was left behind"
  local leftovers
  leftovers=$(pgrep -af 'qemu-system-x86_64 -name warren-' | grep -F "$WARREN_IMAGE_CACHE" || true)
  [ -z "$leftovers" ] || die "QEMU processes left behind by the tests:\n$leftovers"
  leftovers=$(pgrep -af 'warren-memfs --mount /tmp/wt' || true)
  [ -z "$leftovers" ] || die "memory daemons left behind by the tests:\n$leftovers"
  log "all tests passed"
}

cmd_bench() {
  need_root
  install_host_packages
  build_release
  "$REPO/target/release/warren" bench boot --json
  "$REPO/target/release/warren" bench snapshot --json
}

case "${1:-}" in
  # What install_host_packages would ask apt for, one argument a line (no
  # installing); WARREN_DPKG_ADMINDIR points it at another dpkg database.
  plan)
    shift
    case "${1:-}" in up | build | bench) host_package_plan ;; test) host_package_plan "${TEST_PACKAGES[@]}" ;;
      *) echo "usage: $0 plan {up|test}" >&2; exit 2 ;; esac ;;
  up) cmd_up ;;
  test) cmd_test ;;
  build) need_root; install_host_packages; build_release ;;
  bench) cmd_bench ;;
  *) echo "usage: $0 {up|test|build|bench|plan}" >&2; exit 2 ;;
esac
