#!/bin/sh
# The zero-cost table: boots an unpatched and a patched kernel (built from
# the same 7.3.4 source with the same config) alternately under QEMU TCG,
# N times each, runs zerocost.c on an ext4 loop image in each boot, and
# prints, per measurement and kernel, the median over the boots of each
# boot's median, the lowest and highest boot median, and patched/base.
#
#   usage: kernel/bench/zerocost-vm.sh BASE_BZIMAGE PATCHED_BZIMAGE [N]
#
# N defaults to 5. Each boot's raw output is kept in the work directory it
# prints (under /tmp), not in the repository.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
base=${1:?usage: zerocost-vm.sh BASE_BZIMAGE PATCHED_BZIMAGE [N]}
patched=${2:?usage: zerocost-vm.sh BASE_BZIMAGE PATCHED_BZIMAGE [N]}
n=${3:-5}
work=$(mktemp -d /tmp/mapcopy-zerocost.XXXXXX)
gcc -O2 -Wall -static -o "$work/zerocost" "$here/zerocost.c"
cp "$here/../guest-test.sh" "$work/"
echo bench >"$work/mode"
echo "zerocost: $n boots of each kernel, alternating; raw output in $work" >&2
i=1
while [ "$i" -le "$n" ]; do
	for k in base patched; do
		img=$base
		[ "$k" = patched ] && img=$patched
		# A boot can die early under TCG (an int3 Oops while the kernel
		# patches its own text was seen once): up to 3 tries, each kept.
		for try in 1 2 3; do
			log=$work/console-$k-$i-$try.log
			timeout 1200 sh "$here/../run-vm.sh" "$img" "$work" guest-test.sh \
				</dev/null >"$log" 2>&1 || true
			sed 's/\r$//' "$log" |
				grep -a -E '^[A-Za-z_+ ,0-9/()-]+ +[0-9.]+ +[0-9.]+ +[0-9.]+  [a-z/0-9KiB]+$' |
				grep -av '^measurement' >"$work/$k-$i.txt" || true
			[ -s "$work/$k-$i.txt" ] && break
			echo "zerocost: boot $i of $k, try $try, gave no figures (see $log)" >&2
		done
		[ -s "$work/$k-$i.txt" ] || exit 1
		echo "zerocost: boot $i of $k done" >&2
	done
	i=$((i + 1))
done

# name (34 columns) median min max unit, per boot: aggregate the medians.
awk -v n="$n" '
function sort(a, m,    i, j, t) {
	for (i = 2; i <= m; i++)
		for (j = i; j > 1 && a[j - 1] > a[j]; j--) {
			t = a[j]; a[j] = a[j - 1]; a[j - 1] = t
		}
}
{
	k = FILENAME; sub(/.*\//, "", k); sub(/-[0-9]+\.txt$/, "", k)
	name = substr($0, 1, 34); sub(/ +$/, "", name)
	split(substr($0, 35), f, " ")
	if (!(name in seen)) { seen[name] = 1; order[++rows] = name; unit[name] = f[4] }
	c = ++cnt[k, name]; val[k, name, c] = f[1]
}
END {
	printf "%-34s %-10s %10s %10s %10s %8s\n", "measurement", "unit", "base", "patched", "spread", "ratio"
	for (r = 1; r <= rows; r++) {
		name = order[r]
		for (ki = 1; ki <= 2; ki++) {
			k = ki == 1 ? "base" : "patched"
			m = cnt[k, name]
			if (!m) { med[k] = ""; continue }
			for (i = 1; i <= m; i++) a[i] = val[k, name, i]
			sort(a, m)
			med[k] = m % 2 ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
			lo[k] = a[1]; hi[k] = a[m]
		}
		if (med["base"] != "" && med["patched"] != "")
			printf "%-34s %-10s %10.1f %10.1f %4.1f-%4.1f%% %7.3fx\n", name, unit[name],
				med["base"], med["patched"],
				100 * (hi["base"] - lo["base"]) / med["base"],
				100 * (hi["patched"] - lo["patched"]) / med["patched"],
				med["patched"] / med["base"]
		else
			printf "%-34s %-10s %10s %10.1f %4.1f%% %8s\n", name, unit[name], "-",
				med["patched"], 100 * (hi["patched"] - lo["patched"]) / med["patched"], "-"
	}
}' "$work"/base-*.txt "$work"/patched-*.txt
