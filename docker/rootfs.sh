#!/bin/sh
# Assembles what the interlock image is made of, in OUT_DIR:
#   OUT_DIR/rootfs   the runtime root: the binary, exactly the shared libraries it links
#                    (from ldd), an /etc/passwd and /etc/group with an unprivileged user, /tmp
#   OUT_DIR/state    an empty directory, copied to /var/lib/interlock owned by that user
#                    (kept out of rootfs: COPY --chown does not change a directory an earlier
#                    COPY created)
# Used by the Dockerfile's build stage, by docker/prebuilt.Dockerfile (a binary built outside
# Docker) and by the tests, so every path produces the same image layout.
#
#   docker/rootfs.sh BINARY OUT_DIR [NAME]     (the binary becomes /NAME, default /interlock)
set -eu
bin=$1
out=$2
name=${3:-interlock}
root=$out/rootfs
# var/lib exists in the root so that the state directory's COPY --chown creates only
# var/lib/interlock (BuildKit would give the parents it creates to that user too).
mkdir -p "$root/etc" "$root/tmp" "$root/var/lib" "$out/state"
cp "$bin" "$root/$name"
for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
printf 'root:x:0:0:root:/:/sbin/nologin\ninterlock:x:65532:65532:interlock:/:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\ninterlock:x:65532:\n' >"$root/etc/group"
chmod 1777 "$root/tmp"
chmod 0755 "$out/state"
