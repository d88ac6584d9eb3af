#!/usr/bin/env bash
# Kernel CI for MAP_COPY: fetch Debian's linux-source-7.3 with apt (a private
# apt state; the archive comes from this machine's own apt sources), apply
# kernel/patches/, build a minimal debug kernel (tinyconfig + vm.config +
# vm-debug.config: lockdep, DEBUG_VM), boot it under QEMU TCG and run the
# map_copy selftest inside it on ext4, xfs and btrfs loop images, then the
# library's contract suite for Strategy::Kernel and, in the same boot,
# Strategy::Immutable's fs-verity trial (vm-contract.sh).  Prints
# per-filesystem pass/fail counts and the kernel's lockdep reports, BUGs and
# WARNINGs from the console; exits non-zero if any step cannot run, any
# selftest case fails, or the kernel reported anything.
#
#   usage: kernel/ci.sh            (as root: installs its apt packages)
# Environment:
#   MAPCOPY_KBUILD=DIR      build directory (default: a fresh one under /tmp,
#                           removed at the end unless MAPCOPY_KEEP_KBUILD=1);
#                           reused incrementally when kept
#   MAPCOPY_KCONFIG=plain   build without vm-debug.config
#   MAPCOPY_FS="ext4 xfs"   filesystems to test (default: ext4 xfs btrfs)
#   MAPCOPY_SKIP_APT=1      do not apt-get install the tools
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
step() { printf '\n=== kernel: %s\n' "$*"; }
fail() { printf '\n=== kernel: FAILED: %s\n' "$*" >&2; exit 1; }

if [ "${MAPCOPY_SKIP_APT:-0}" != 1 ]; then
	step "installing kernel build and VM packages"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends qemu-system-x86 \
		busybox-static bison flex cpio libelf-dev bc gcc make libc6-dev \
		e2fsprogs xfsprogs btrfs-progs util-linux coreutils patch \
		xz-utils fsverity >/dev/null
fi

kb=${MAPCOPY_KBUILD:-$(mktemp -d /tmp/mapcopy-kbuild.XXXXXX)}
mkdir -p "$kb"
kb=$(cd "$kb" && pwd)
[ "${MAPCOPY_KEEP_KBUILD:-0}" = 1 ] || trap 'rm -rf "$kb"' EXIT
src=$kb/linux-source-7.3
frags="$here/vm.config"
out=$kb/build
if [ "${MAPCOPY_KCONFIG:-debug}" != plain ]; then
	frags="$frags $here/vm-debug.config"
	out=$kb/build-debug
fi
work=$kb/vm

# The source tree is pristine 7.3.4 plus exactly the current series: a tree
# patched with another version of the series is unpacked again.
stamp=$(cat "$here"/patches/0*.patch | sha256sum | cut -d' ' -f1)
if [ -d "$src" ] && [ "$(cat "$src/.mapcopy-series" 2>/dev/null)" != "$stamp" ]; then
	rm -rf "$src"
fi

if [ ! -d "$src" ]; then
	step "fetching linux-source-7.3 with apt"
	rm -f "$kb"/linux-source-7.3_*.deb
	sh "$here/fetch-source.sh" "$kb" 7.3 >/dev/null || fail "cannot fetch linux-source-7.3"
	grep -q '^SUBLEVEL = 4$' "$src/Makefile" || fail "expected Linux 7.3.4"

	step "applying kernel/patches"
	for p in "$here"/patches/0*.patch; do
		case "$p" in */0000-*) continue ;; esac
		echo "$(basename "$p")"
		# patch(1), not git apply: git apply inside another repository's
		# work tree silently skips paths.
		patch -d "$src" -p1 -s -N --no-backup-if-mismatch <"$p" ||
			fail "patch does not apply: $(basename "$p")"
	done
	echo "$stamp" >"$src/.mapcopy-series"
fi

step "configuring and building bzImage (tinyconfig + ${frags//$here\//})"
if [ ! -f "$out/.config" ]; then
	mkdir -p "$out"
	make -s -C "$src" O="$out" tinyconfig
	# shellcheck disable=SC2086
	"$src/scripts/kconfig/merge_config.sh" -m -O "$out" "$out/.config" \
		$frags >/dev/null
	make -s -C "$src" O="$out" olddefconfig
fi
for f in $frags; do
	grep '^CONFIG_' "$f" | while read -r l; do
		grep -qx "$l" "$out/.config" || fail "config: $l did not stick"
	done
done
grep -q '^CONFIG_MAPCOPY=y' "$out/.config" || fail "CONFIG_MAPCOPY is not set"
start=$(date +%s)
nice -n 10 make -s -C "$src" O="$out" -j"$(nproc)" bzImage || fail "kernel build"
echo "built in $(($(date +%s) - start)) s"

step "building the selftest"
rm -rf "$work" && mkdir -p "$work"
gcc -O2 -Wall -static -o "$work/map_copy" \
	"$src/tools/testing/selftests/mm/map_copy.c" || fail "selftest build"
cp "$here/guest-test.sh" "$work/"
echo selftest >"$work/mode"
fss=${MAPCOPY_FS:-ext4 xfs btrfs}
echo "$fss" >"$work/filesystems"

step "booting the patched kernel under QEMU TCG: map_copy selftest on $fss"
log=$kb/console.log
[ "${MAPCOPY_KEEP_KBUILD:-0}" = 1 ] || log=$(mktemp /tmp/mapcopy-kernel-console.XXXXXX.log)
start=$(date +%s)
# The guest's / is this machine's / over 9p: mkfs.* and mount are the host's.
timeout 3600 sh "$here/run-vm.sh" "$out/arch/x86/boot/bzImage" "$work" \
	guest-test.sh </dev/null >"$log" 2>&1 || true
echo "VM ran $(($(date +%s) - start)) s"
# The serial console ends its lines with CR LF: the checks below match ends
# of lines.
sed -i 's/\r$//' "$log"
# The guest's own output; kernel messages (timestamped) are summarised below.
grep -a -v '^\[ *[0-9]*\.[0-9]*\]' "$log" | grep -a -v '^GUEST\[' || true

bad=0
step "selftest results per filesystem"
for fs in $fss; do
	r=$(grep -a "^GUEST: RESULT fs=$fs " "$log" | tail -1 || true)
	n=$(grep -a "^GUEST: NOTRUN fs=$fs " "$log" | tail -1 || true)
	if [ -n "$r" ]; then
		echo "${r#GUEST: RESULT }"
		case "$r" in *" fail=0 skip="*" error=0 rc=0") ;; *) bad=1 ;; esac
		grep -a "^GUEST\[$fs\]: not ok" "$log" | sed 's/^GUEST\[[a-z0-9]*\]: /    /' || true
	elif [ -n "$n" ]; then
		echo "${n#GUEST: }"
		bad=1
	else
		echo "fs=$fs did not run (the guest crashed, hung or timed out before it)"
		bad=1
	fi
done
grep -aq '^GUEST-EXIT rc=' "$log" || { echo "the guest did not reach GUEST-EXIT"; bad=1; }

step "kernel reports on the console (lockdep, BUG, WARNING, hung tasks)"
pat='possible recursive locking|possible circular locking|inconsistent lock state|lock held when returning|suspicious RCU usage|BUG:|WARNING:|Oops|Kernel panic|INFO: task .* blocked|rcu_.*detected stall|general protection fault|kernel BUG'
if grep -aEq "$pat" "$log"; then
	grep -aE "$pat" "$log" | sed 's/^\[ *[0-9.]*\] //' | sort | uniq -c
	# The first report in full, up to its end marker.
	awk -v pat="$pat" '$0 ~ pat { on = 1 } on { print; if (++n >= 60) exit }' "$log"
	bad=1
else
	echo "none"
fi

[ "$bad" = 0 ] || fail "map_copy selftest (console log: $log)"

step "the library's contract suite for Strategy::Kernel in the VM (ext4, xfs, btrfs), and Strategy::Immutable on fs-verity files (ext4)"
start=$(date +%s)
sh "$here/vm-contract.sh" "$out/arch/x86/boot/bzImage" kernel/ ||
	fail "Strategy::Kernel contract suite or the fs-verity trial in the VM"
echo "contract suite in the VM: $(($(date +%s) - start)) s"
step "kernel CI passed"
