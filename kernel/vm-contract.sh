#!/bin/sh
# Runs the library's contract suite for Strategy::Kernel inside a VM booted
# on a kernel built from this series (the same runner and cases as every
# other strategy: crates/mapcopy/tests/contract.rs). TMPDIR is an ext4 loop
# image in the guest; the runner makes its own xfs and btrfs loop mounts.
# In the same boot, first, Strategy::Immutable's fs-verity trials
# (crates/mapcopy/tests/immutable.rs `verity/`: `verity/files`, files on an
# ext4 image made with -O verity, before and after `fsverity enable`;
# `verity/corrupted-block`), which need the kernel's CONFIG_FS_VERITY
# (vm.config); they run with MAPCOPY_REQUIRE_ALL=1 and must pass, and
# `verity/files` must be among them: on a kernel without fs-verity the
# trial there is `verity/not-on-this-kernel`, and this script fails.
#
#   usage: kernel/vm-contract.sh BZIMAGE [RUNNER ARGS...]   (as root)
#
# MAPCOPY_VM_LOGS=DIR: copy the console log and the runners' logs (stdout
# .log, the immutable runner's stderr .err) to DIR at the end.
# BZIMAGE: a kernel built by ci.sh or dev.sh (e.g. KBUILD/build-debug/arch/
# x86/boot/bzImage). RUNNER ARGS: what the contract runner gets (default
# "kernel/": every Kernel trial; e.g. "kernel/ --skip huge-sparse"). Builds
# the contract and immutable test binaries first (cargo, in the
# repository). Prints the runners' summaries and exits non-zero if any
# trial failed, verity/files did not pass, the VM could not run, or the
# kernel printed a lockdep report, BUG or WARNING.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
k=${1:?usage: vm-contract.sh BZIMAGE [RUNNER ARGS...]}
shift
[ $# -gt 0 ] || set -- kernel/
[ -f "$k" ] || { echo "no kernel image at $k" >&2; exit 1; }
json=$(cd "$repo" && cargo test -p mapcopy --test contract --test immutable --no-run \
	--message-format=json 2>/dev/null) || true
bin=$(echo "$json" | sed -n 's/.*"executable":"\([^"]*\/contract-[^"]*\)".*/\1/p' | tail -1)
imm=$(echo "$json" | sed -n 's/.*"executable":"\([^"]*\/immutable-[^"]*\)".*/\1/p' | tail -1)
[ -x "$bin" ] || { echo "could not build the contract test binary" >&2; exit 1; }
[ -x "$imm" ] || { echo "could not build the immutable test binary" >&2; exit 1; }
work=$(mktemp -d /tmp/mapcopy-vm-contract.XXXXXX)
# MAPCOPY_VM_LOGS=DIR keeps the console and the runners' logs there.
trap '[ -z "${MAPCOPY_VM_LOGS:-}" ] || { mkdir -p "$MAPCOPY_VM_LOGS" &&
	cp "$work"/*.log "$work"/*.err "$MAPCOPY_VM_LOGS"/ 2>/dev/null; }; rm -rf "$work"' EXIT
# The guest sees this machine's / read-only but has its own /tmp, where a
# checkout (CI's clone, say) may live: run a copy from the work directory,
# which the guest shares at the same path. Searchable by nobody, for the
# runners' unprivileged trials.
cp "$bin" "$work/contract"
cp "$imm" "$work/immutable"
chmod 755 "$work" "$work/contract" "$work/immutable"
bin=$work/contract
imm=$work/immutable
cat > "$work/run.sh" <<GUEST
set -u
# fs-verity: its own ext4 image (-O verity) on the guest's /tmp (tmpfs).
MAPCOPY_REQUIRE_ALL=1 "$imm" verity/ > "$work/immutable.log" 2> "$work/immutable.err"
echo "VM-IMMUTABLE rc=\$?"
truncate -s 1G /tmp/ext4.img && mkfs.ext4 -q -F /tmp/ext4.img &&
	mkdir -p /tmp/ext4mnt && mount -o loop /tmp/ext4.img /tmp/ext4mnt &&
	chmod 1777 /tmp/ext4mnt || { echo "VM-CONTRACT cannot make the ext4 TMPDIR"; exit 3; }
export TMPDIR=/tmp/ext4mnt
MAPCOPY_TRIAL_TIMEOUT=600 "$bin" $* --test-threads 1 > "$work/contract.log" 2>&1
echo "VM-CONTRACT rc=\$?"
GUEST
timeout 3600 sh "$here/run-vm.sh" "$k" "$work" run.sh > "$work/console.log" 2>&1 || true
echo "Strategy::Immutable, fs-verity (tests/immutable.rs verity/):"
grep -E '^test |^test result' "$work/immutable.log" 2>/dev/null || true
echo "Strategy::Kernel (tests/contract.rs $*):"
grep -E '^test .*FAILED|^test result' "$work/contract.log" 2>/dev/null || true
sed -i 's/\r$//' "$work/console.log"
pat='possible recursive locking|possible circular locking|inconsistent lock state|lock held when returning|suspicious RCU usage|BUG:|WARNING:|Oops|Kernel panic|INFO: task .* blocked|rcu_.*detected stall|general protection fault|kernel BUG'
if grep -aEq "$pat" "$work/console.log"; then
	echo "vm-contract: FAILED: the kernel reported (first report follows)" >&2
	awk -v pat="$pat" '$0 ~ pat { on = 1 } on { print; if (++n >= 60) exit }' "$work/console.log" >&2
	exit 1
fi
# The real fs-verity trial, not its stand-in for kernels without fs-verity.
if ! grep -q 'VM-IMMUTABLE rc=0' "$work/console.log" ||
	! grep -q '^test verity/files  *\.\.\. ok$' "$work/immutable.log" 2>/dev/null; then
	echo "vm-contract: FAILED: Strategy::Immutable's verity/files did not pass (its log follows)" >&2
	cat "$work/immutable.log" >&2 2>/dev/null || true
	tail -60 "$work/immutable.err" >&2 2>/dev/null || true
	grep -a 'VM-IMMUTABLE' "$work/console.log" >&2 || true
	exit 1
fi
if grep -q 'VM-CONTRACT rc=0' "$work/console.log"; then
	echo "vm-contract: passed (verity/files too; no lockdep report, BUG or WARNING on the console)"
	exit 0
fi
echo "vm-contract: FAILED (console tail follows)" >&2
tail -40 "$work/console.log" >&2
exit 1
