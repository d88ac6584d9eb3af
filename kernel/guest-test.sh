#!/bin/sh
# Runs inside the test VM (see run-vm.sh) with the work directory as cwd.
# The work directory holds the static test binaries and a file "mode":
#   selftest  - tools/testing/selftests/mm/map_copy on an ext4, an xfs and a
#               btrfs loop image (or the filesystems listed in the file
#               "filesystems"), one after the other
#   bench     - kernel/bench/zerocost on an ext4 loop image
# Loop images live on the guest's tmpfs (sparse, 1 GiB each); tmpfs itself
# lacks FALLOC_FL_ZERO_RANGE, collapse and insert range.
#
# Output the host parses (kernel/ci.sh):
#   GUEST: RESULT fs=FS pass=N fail=N skip=N error=N rc=N   one per filesystem
#   GUEST: NOTRUN fs=FS why                                 mkfs/mount failed
# Kernel messages of every level go to the console (printk level 8) so that
# lockdep reports and WARNINGs, which are KERN_WARNING, reach the host's log
# even if the guest hangs afterwards.
set -u
mode=$(cat mode)
echo 8 >/proc/sys/kernel/printk 2>/dev/null
per_fs_timeout=${MAPCOPY_FS_TIMEOUT:-900}

# mount_fs FS: a fresh loop-mounted FS image at /tmp/mapcopy-FS; prints the
# mount point.
mount_fs() {
	img=/tmp/mapcopy-$1.img
	mnt=/tmp/mapcopy-$1
	mkdir -p "$mnt" || return 1
	rm -f "$img"
	truncate -s 1G "$img" || return 1
	case "$1" in
	ext4) mkfs.ext4 -q -F "$img" >&2 ;;
	xfs) mkfs.xfs -q -f "$img" >&2 ;;
	btrfs) mkfs.btrfs -q -f "$img" >&2 ;;
	*) echo "unknown filesystem $1" >&2; return 1 ;;
	esac || return 1
	mount -t "$1" -o loop "$img" "$mnt" >&2 || return 1
	echo "$mnt"
}

umount_fs() {
	umount "/tmp/mapcopy-$1" && rm -f "/tmp/mapcopy-$1.img"
}

case "$mode" in
selftest)
	fss="ext4 xfs btrfs"
	[ -f filesystems ] && fss=$(cat filesystems)
	rc=0
	for fs in $fss; do
		if ! mnt=$(mount_fs "$fs"); then
			echo "GUEST: NOTRUN fs=$fs cannot make or mount a $fs loop image"
			rc=1
			continue
		fi
		echo "GUEST: map_copy selftest on $fs"
		echo "mapcopy: map_copy selftest on $fs starts" >/dev/kmsg
		TMPDIR=$mnt timeout "$per_fs_timeout" ./map_copy "$mnt" >"out-$fs.txt" 2>&1
		trc=$?
		sed "s/^/GUEST[$fs]: /" "out-$fs.txt"
		t=$(sed -n 's/^# Totals: pass:\([0-9]*\) fail:\([0-9]*\) xfail:[0-9]* xpass:[0-9]* skip:\([0-9]*\) error:\([0-9]*\).*/pass=\1 fail=\2 skip=\3 error=\4/p' "out-$fs.txt")
		[ -n "$t" ] || t="pass=? fail=? skip=? error=? (no totals: crashed or timed out)"
		echo "GUEST: RESULT fs=$fs $t rc=$trc"
		[ "$trc" = 0 ] || rc=1
		umount_fs "$fs" || { echo "GUEST: cannot unmount $fs"; rc=1; }
	done
	# 1 while lockdep is still checking (it switches itself off after its
	# first report)
	[ -r /proc/lockdep_stats ] &&
		echo "GUEST: lockdep $(grep -o 'debug_locks: *[0-9]*' /proc/lockdep_stats | tr -s ' ')"
	;;
bench)
	mnt=$(mount_fs ext4) || exit 12
	echo "GUEST: zerocost on ext4, kernel $(uname -r)"
	TMPDIR=$mnt ./zerocost "$mnt"
	rc=$?
	umount_fs ext4
	;;
*)
	echo "GUEST: unknown mode $mode"
	rc=2
	;;
esac
exit $rc
