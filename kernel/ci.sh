#!/usr/bin/env bash
# Kernel CI for MAP_COPY: fetch Debian's linux-source-7.3 with apt (a private
# apt state; the archive comes from this machine's own apt sources), apply
# kernel/patches/, build a minimal kernel (tinyconfig + vm.config), boot it
# under QEMU TCG and run the map_copy selftest inside it.  Fails loudly if
# any step cannot run.  Build directory: $MAPCOPY_KBUILD (default: a fresh
# directory under /tmp, removed at the end unless MAPCOPY_KEEP_KBUILD=1).
#   usage: kernel/ci.sh            (as root: installs its apt packages)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
step() { printf '\n=== kernel: %s\n' "$*"; }
fail() { printf '\n=== kernel: FAILED: %s\n' "$*" >&2; exit 1; }

step "installing kernel build and VM packages"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends qemu-system-x86 busybox-static \
	bison flex cpio libelf-dev bc gcc make libc6-dev e2fsprogs util-linux \
	xz-utils >/dev/null

kb=${MAPCOPY_KBUILD:-$(mktemp -d /tmp/mapcopy-kbuild.XXXXXX)}
mkdir -p "$kb"
[ "${MAPCOPY_KEEP_KBUILD:-0}" = 1 ] || trap 'rm -rf "$kb"' EXIT
src=$kb/linux-source-7.3
out=$kb/build
work=$kb/vm

step "fetching linux-source-7.3 with apt"
if [ ! -d "$src" ]; then
	sh "$here/fetch-source.sh" "$kb" 7.3 || fail "cannot fetch linux-source-7.3"
fi
grep -q '^SUBLEVEL = 4$' "$src/Makefile" || fail "expected Linux 7.3.4"

step "applying kernel/patches"
for p in "$here"/patches/0*.patch; do
	case "$p" in */0000-*) continue ;; esac
	(cd "$src" && git apply --check "$p" 2>/dev/null && git apply "$p") ||
		(cd "$src" && git apply -R --check "$p" 2>/dev/null) ||
		fail "patch does not apply: $(basename "$p")"
done

step "configuring and building bzImage (tinyconfig + vm.config)"
if [ ! -f "$out/.config" ]; then
	make -s -C "$src" O="$out" tinyconfig
	"$src/scripts/kconfig/merge_config.sh" -m -O "$out" "$out/.config" \
		"$here/vm.config" >/dev/null
	make -s -C "$src" O="$out" olddefconfig
fi
grep -q '^CONFIG_MAPCOPY=y' "$out/.config" || fail "CONFIG_MAPCOPY is not set"
start=$(date +%s)
make -s -C "$src" O="$out" -j"$(nproc)" bzImage || fail "kernel build"
echo "built in $(( $(date +%s) - start )) s"

step "building the selftest"
rm -rf "$work" && mkdir -p "$work"
gcc -O2 -Wall -static -o "$work/map_copy" \
	"$src/tools/testing/selftests/mm/map_copy.c" || fail "selftest build"
cp "$here/guest-test.sh" "$work/"
echo selftest >"$work/mode"

step "booting the patched kernel under QEMU TCG: map_copy selftest"
log=$kb/selftest.log
timeout 900 sh "$here/run-vm.sh" "$out/arch/x86/boot/bzImage" "$work" \
	guest-test.sh </dev/null 2>&1 | tee "$log" | grep -v '^\[' || true
grep -q '^GUEST-EXIT rc=0' "$log" || fail "selftest in the VM (see above)"
grep -q '^# Totals: pass:[1-9]' "$log" || fail "selftest ran no test"
grep -q 'fail:0 ' "$log" || fail "selftest has failures"
step "kernel CI passed"
