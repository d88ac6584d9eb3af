#!/bin/sh
# Runs inside the test VM (see run-vm.sh) with the work directory as cwd.
# The work directory holds the static test binaries and a file "mode":
#   selftest  - tools/testing/selftests/mm/map_copy on an ext4 loop image
#   bench     - kernel/bench/zerocost on an ext4 loop image
# TMPDIR is an ext4 loop image inside the guest (tmpfs lacks
# FALLOC_FL_ZERO_RANGE, collapse and insert range).
set -u
mode=$(cat mode)
img=/tmp/mapcopy-ext4.img
mnt=/tmp/mapcopy-ext4
mkdir -p "$mnt"
truncate -s 1G "$img" || exit 10
mkfs.ext4 -q -F "$img" || exit 11
mount -o loop "$img" "$mnt" || exit 12
export TMPDIR="$mnt"
case "$mode" in
selftest)
	echo "GUEST: map_copy selftest on ext4"
	./map_copy "$mnt"
	rc=$?
	echo "GUEST: map_copy rc=$rc"
	;;
bench)
	echo "GUEST: zerocost on ext4, kernel $(uname -r)"
	./zerocost "$mnt"
	rc=$?
	;;
*)
	echo "GUEST: unknown mode $mode"
	rc=2
	;;
esac
umount "$mnt"
exit $rc
