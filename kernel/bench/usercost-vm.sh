#!/bin/sh
# What users of MAP_COPY pay (issue 22): boots a kernel built from this
# series under QEMU TCG and runs `mapcopy bench` (a release build) in it,
# with its files on a filesystem on a virtio disk of the guest's own (a
# sparse raw image on this machine: the 4 GiB random-pattern file fits in
# neither the guest's tmpfs nor its RAM), once per filesystem. Kernel is
# measured beside every other strategy the filesystem allows (Reflink on
# xfs only), against MAP_PRIVATE and std::fs::read, in one run per boot.
# Prints each run's tables and goals.
#
#   usage: kernel/bench/usercost-vm.sh BZIMAGE [FILESYSTEMS [BENCH ARGS...]]
#
# FILESYSTEMS: space-separated, of ext4 and xfs [default: "ext4 xfs"].
# BENCH ARGS replace the default "-n 5 --strategy
# kernel,guard,lease,reflink,lazy,eager --many-files 200" (files of 64 MiB
# and 1 GiB, the random pattern also on a 4 GiB sparse-ish file; about
# an hour per filesystem under TCG on 2 host cores). The guest gets
# 8 GiB of RAM instead of run-vm.sh's 4: std::fs::read of the 4 GiB file
# needs 4 GiB of anonymous memory beside the page cache. The console logs,
# report.md, results.json and plots of each run stay in the work directory
# it prints (under /tmp), not in the repository.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
k=${1:?usage: usercost-vm.sh BZIMAGE [FILESYSTEMS [BENCH ARGS...]]}
fss=${2:-ext4 xfs}
[ $# -ge 2 ] && shift 2 || shift $#
[ $# -gt 0 ] || set -- -n 5 --strategy kernel,guard,lease,reflink,lazy,eager --many-files 200
[ -f "$k" ] || { echo "no kernel image at $k" >&2; exit 1; }
(cd "$repo" && cargo build --release -q -p mapcopy-cli) ||
	{ echo "could not build mapcopy" >&2; exit 1; }
work=$(mktemp -d /tmp/mapcopy-usercost.XXXXXX)
cp "$repo/target/release/mapcopy" "$work/mapcopy"
echo "usercost: work directory $work" >&2
rc=0
for fs in $fss; do
	case $fs in
	ext4) mkfs="mkfs.ext4 -q -F" ;;
	xfs) mkfs="mkfs.xfs -q -f -m reflink=1" ;;
	*) echo "usercost: unknown filesystem $fs (ext4 or xfs)" >&2; exit 1 ;;
	esac
	img=$work/disk-$fs.img
	rm -f "$img"
	truncate -s 12G "$img"
	cat >"$work/run-$fs.sh" <<GUEST
set -u
$mkfs /dev/vda && mkdir -p /tmp/mnt && mount /dev/vda /tmp/mnt ||
	{ echo "USERCOST cannot make the $fs filesystem on /dev/vda"; exit 3; }
echo "USERCOST-BEGIN $fs"
"$work/mapcopy" bench --dir /tmp/mnt --out "$work/out-$fs" $* 2>"$work/progress-$fs.log"
echo "USERCOST-END rc=\$?"
GUEST
	log=$work/console-$fs.log
	echo "usercost: booting for $fs ($(date -u +%H:%M) UTC)" >&2
	timeout 7200 nice sh "$here/../run-vm.sh" "$k" "$work" "run-$fs.sh" \
		-m 8G -drive "file=$img,if=virtio,format=raw" </dev/null >"$log" 2>&1 || true
	rm -f "$img"
	sed -i 's/\r$//' "$log"
	if grep -q 'USERCOST-END rc=0' "$log"; then
		echo "=== $fs ==="
		sed -n '/^USERCOST-BEGIN/,/^USERCOST-END/p' "$log" | grep -av '^USERCOST-'
	else
		echo "usercost: the $fs run failed (console tail follows)" >&2
		tail -40 "$log" >&2
		rc=1
	fi
done
exit $rc
