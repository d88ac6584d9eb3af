#!/bin/sh
# Installs the C library: install.sh PREFIX [PROFILE]
#   PREFIX/lib/libmapcopy.so, PREFIX/lib/libmapcopy.a,
#   PREFIX/include/mapcopy.h, PREFIX/lib/pkgconfig/mapcopy.pc
# Build it first: cargo build [--release] -p mapcopy-capi (PROFILE: debug or
# release, default release). Then: cc app.c $(pkg-config --cflags --libs mapcopy)
set -eu
prefix=${1:?usage: install.sh PREFIX [debug|release]}
profile=${2:-release}
here=$(cd "$(dirname "$0")" && pwd)
target=${CARGO_TARGET_DIR:-$here/../../target}/$profile
for f in libmapcopy.so libmapcopy.a; do
	[ -f "$target/$f" ] || { echo "install.sh: $target/$f missing: cargo build${profile:+ --profile $profile} -p mapcopy-capi" >&2; exit 1; }
done
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/../../Cargo.toml" | head -n 1)
mkdir -p "$prefix/lib/pkgconfig" "$prefix/include"
install -m 0755 "$target/libmapcopy.so" "$prefix/lib/"
install -m 0644 "$target/libmapcopy.a" "$prefix/lib/"
install -m 0644 "$here/include/mapcopy.h" "$prefix/include/"
cat >"$prefix/lib/pkgconfig/mapcopy.pc" <<PC
prefix=$prefix
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: mapcopy
Description: MAP_COPY for Linux: file mappings whose bytes no other writer can change
Version: $version
Cflags: -I\${includedir}
Libs: -L\${libdir} -lmapcopy
Libs.private: -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
PC
echo "installed mapcopy $version into $prefix"
