#!/bin/sh
# Assembles the runtime root file system of the interlock image: the binary, exactly the
# shared libraries it links (from ldd), and an /etc/passwd with an unprivileged user.
# Used by the Dockerfile's build stage and by the tests (docker build --build-arg
# ARTIFACTS=prebuilt), so both produce the same image layout.
#
#   docker/rootfs.sh BINARY OUT_DIR [NAME]     (the binary becomes /NAME, default /interlock)
set -eu
bin=$1
out=$2
name=${3:-interlock}
mkdir -p "$out/etc" "$out/tmp" "$out/var/lib/interlock"
cp "$bin" "$out/$name"
for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
    mkdir -p "$out$(dirname "$lib")"
    cp -L "$lib" "$out$lib"
done
printf 'root:x:0:0:root:/:/sbin/nologin\ninterlock:x:65532:65532:interlock:/:/sbin/nologin\n' >"$out/etc/passwd"
printf 'root:x:0:\ninterlock:x:65532:\n' >"$out/etc/group"
chmod 1777 "$out/tmp"
