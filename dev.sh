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
# release as qemu-system-x86, so both are always installed together.
HOST_PACKAGES=(qemu-system-x86 qemu-utils mmdebstrap e2fsprogs dpkg apt ca-certificates curl python3 python3-venv fuse3)
# Only the test suite needs a browser.
TEST_PACKAGES=(chromium)

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'dev.sh: %s\n' "$*" >&2; exit 1; }

need_root() {
  [ "$(id -u)" = 0 ] || die "run as root: building guest images (mmdebstrap, ext4 ownership) and installing packages need it"
}

install_host_packages() {
  local wanted=("${HOST_PACKAGES[@]}" "$@")
  local missing=()
  for pkg in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  # qemu-utils from another QEMU release (e.g. a backport) conflicts with
  # qemu-system-x86 from bookworm: require the same version.
  if [ ${#missing[@]} -eq 0 ]; then
    local sys utils
    sys=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)
    utils=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
    [ "${sys%%+*}" = "${utils%%+*}" ] || missing+=(qemu-system-x86 qemu-utils)
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends --allow-downgrades "${wanted[@]}" >/dev/null
  fi
  command -v cargo >/dev/null || die "cargo is not installed; install a Rust toolchain (rustup) first"
  if ! node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a==20&&b>=19)?0:1)' 2>/dev/null; then
    log "installing Node.js from Debian (the web console needs Node >= 20.19)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >/dev/null || true
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
  cargo build --release --locked -p warren-cli -p warren-snapshot
  install -m 0755 "$GUEST_BIN" "$REPO/target/release/warren-guest"
}

cmd_up() {
  need_root
  install_host_packages
  build_release
  local warren="$REPO/target/release/warren"
  log "building the default guest image if needed (the first time takes about two minutes)"
  "$warren" images build debian
  log "starting warren (Ctrl-C stops it); in another terminal: $warren create, $warren ls, $warren exec ID -- CMD"
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
  cargo build --locked -p warren-snapshot --bin warren-memfs
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
  up) cmd_up ;;
  test) cmd_test ;;
  build) need_root; install_host_packages; build_release ;;
  bench) cmd_bench ;;
  *) echo "usage: $0 {up|test|build|bench}" >&2; exit 2 ;;
esac
