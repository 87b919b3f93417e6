#!/bin/sh
# /init of the QEMU network-boot test's initramfs (tests/pxe/assets). Its
# parameters come from the kernel command line Cairn rendered from the
# build's cairnAppend (cairn.grpc, cairn.dns, cairn.domain). Prints
# CAIRN-E2E: lines on the serial console, then powers off.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
exec >/dev/console 2>&1
param() { tr ' ' '\n' </proc/cmdline | sed -n "s/^$1=//p" | head -n1; }
say() { echo "CAIRN-E2E: $*"; }
say "build $(cat /etc/cairn-build 2>/dev/null || echo none)"
say "cmdline $(cat /proc/cmdline)"
for m in failover net_failover virtio_ring virtio virtio_pci_legacy_dev \
    virtio_pci_modern_dev virtio_pci virtio_net; do
    [ -f /lib/modules/$m.ko ] && insmod /lib/modules/$m.ko 2>/dev/null
done
IF=eth0
i=0
while [ ! -e /sys/class/net/$IF ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
ip link set lo up
ip link set $IF up
if udhcpc -i $IF -n -q -t 5 -T 1 -s /udhcpc.script >/tmp/udhcpc.log 2>&1; then
    . /tmp/dhcp.env
    say "address $ip"
else
    say "FAIL dhcp"
    cat /tmp/udhcpc.log
fi
GRPC=$(param cairn.grpc)
DNS=$(param cairn.dns)
DOMAIN=$(param cairn.domain)
MAC=$(cat /sys/class/net/$IF/address)
nslookup -type=SRV "_cairn._tcp.$DOMAIN" "$DNS" 2>&1 | sed 's/^/CAIRN-E2E: srv| /'
# Under QEMU's user networking the SRV targets (the nodes' own addresses)
# are the host's loopback, which the guest cannot reach: there the command
# line names the node as the guest reaches it (cairn.grpc), and the
# node's Locate answer, tried first, is refused at once. On a real network
# the SRV record alone finds the node.
if [ -n "$GRPC" ]; then
    set -- --server "$GRPC"
else
    set -- --dns "$DNS" --domain "$DOMAIN"
fi
say "pull $*"
TOKEN=$(param cairn.token)
if [ -n "$TOKEN" ]; then
    echo "$TOKEN" >/tmp/token
    set -- "$@" --token-file /tmp/token
fi
if cairn pull "$@" --mac "$MAC" >/tmp/pull.out 2>&1; then
    sed 's/^/CAIRN-E2E: pull| /' /tmp/pull.out
    say "pull OK"
else
    sed 's/^/CAIRN-E2E: pull| /' /tmp/pull.out
    say "FAIL pull"
fi
say "done"
poweroff -f
