#!/bin/sh
# Assembles the image's root filesystem: the observer binary and exactly the shared libraries it loads (as
# ldd lists them: libc, libm, libgcc_s, the dynamic loader), plus the CA bundle when the build machine has
# one. No shell, no package manager, nothing from a registry: the image is `FROM scratch` + this tree.
# Used by both `./x image` (xtask) and deploy/Dockerfile, so that they build the same thing.
#
#   deploy/image/rootfs.sh BINARY DEST
set -eu
bin=$1
dest=$2
[ -x "$bin" ] || { echo "rootfs.sh: $bin is not an executable" >&2; exit 1; }
rm -rf "$dest"
mkdir -p "$dest/usr/local/bin" "$dest/tmp"
chmod 1777 "$dest/tmp"
cp "$bin" "$dest/usr/local/bin/observer"
# "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" and "/lib64/ld-linux-x86-64.so.2 (0x…)"; the vdso
# has no file.
ldd "$bin" | awk '/=>/ { if ($3 ~ /^\//) print $3; next } $1 ~ /^\// { print $1 }' | while read -r lib; do
    mkdir -p "$dest$(dirname "$lib")"
    # -L: the file, not the symlink (libc.so.6 -> libc-2.36.so on some systems).
    cp -L "$lib" "$dest$lib"
done
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    mkdir -p "$dest/etc/ssl/certs"
    cp /etc/ssl/certs/ca-certificates.crt "$dest/etc/ssl/certs/"
fi
