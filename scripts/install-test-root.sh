#!/usr/bin/env bash
# Install a netmod .deb into a fresh root and check it, without touching this
# machine: run inside `unshare --mount` (the package test does). The root is
# this machine's /usr, /etc, /var and /opt seen through copy-on-write
# overlays on a tmpfs, so dpkg installs for real (maintainer scripts
# included) and every change vanishes with the mount namespace.
# Usage: install-test-root.sh PACKAGE.deb
set -euo pipefail
deb=$(readlink -f "$1")
mount --make-rprivate /
scratch=$(mktemp -d /tmp/netmod-pkgroot.XXXXXX)
mount -t tmpfs netmod-pkgroot "$scratch"
root=$scratch/root
mkdir -p "$root"
for d in usr etc var opt; do
  mkdir -p "$scratch/upper/$d" "$scratch/work/$d" "$root/$d"
  [ -d "/$d" ] || mkdir -p "/$d"
  mount -t overlay "netmod-pkgroot-$d" \
    -o "lowerdir=/$d,upperdir=$scratch/upper/$d,workdir=$scratch/work/$d" "$root/$d"
done
for l in bin sbin lib lib64; do
  [ -L "/$l" ] && ln -s "$(readlink "/$l")" "$root/$l"
done
mkdir -p "$root/proc" "$root/dev" "$root/tmp" "$root/run" "$root/root"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
cp "$deb" "$root/tmp/"
# A root where netmod was never installed: remove what an earlier manual
# install may have left (in the overlay only).
chroot "$root" sh -c 'dpkg --purge netmod >/dev/null 2>&1 || true; rm -f /usr/bin/netmod /opt/cni/bin/netmod'
chroot "$root" env DEBIAN_FRONTEND=noninteractive dpkg -i "/tmp/$(basename "$deb")"
echo "== files"
chroot "$root" dpkg -L netmod
echo "== verify"
chroot "$root" systemd-analyze verify --man=no /usr/lib/systemd/system/netmod-node.service
echo "== version"
chroot "$root" /usr/bin/netmod --version
echo "== cni"
chroot "$root" readlink -f /opt/cni/bin/netmod
chroot "$root" env CNI_COMMAND=VERSION /opt/cni/bin/netmod </dev/null
echo "== lab"
chroot "$root" /usr/bin/netmod-lab --help >/dev/null && echo "netmod-lab runs"
