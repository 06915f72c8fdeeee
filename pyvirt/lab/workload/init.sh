#!/bin/sh
# PID 1 of the pyvirt test guest (busybox ash). It mounts the API filesystems, loads
# the power-button drivers (always) and the disk driver (only when a disk is
# configured: keeps diskless boots fast), runs the workload, and then stays alive:
# PID 1 exiting would panic the kernel and bury the workload's last words under the
# panic report. The workload itself powers the guest off (ACPI power button or
# pvw.poweroff_after); a reset just runs all of this again.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
# devtmpfs also creates /dev/input/event* as evdev registers input devices.
mount -t devtmpfs devtmpfs /dev

# Insmod a module set in the order the builder wrote (empty if all built in).
load_modules() {
    while read -r mod; do
        insmod "/lib/modules/$mod" || echo "PVW ERROR insmod $mod failed"
    done < "/lib/modules/$1.order"
}

disk=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        pvw.disk=*) disk="${arg#pvw.disk=}" ;;
    esac
done

# ACPI button + evdev: the power button becomes KEY_POWER on /dev/input/event*.
load_modules power

if [ -n "$disk" ]; then
    load_modules disk
    n=0
    while [ ! -b "$disk" ] && [ "$n" -lt 100 ]; do
        sleep 0.05
        n=$((n + 1))
    done
    [ -b "$disk" ] || echo "PVW ERROR disk $disk did not appear"
fi

# --guest: watch the power button and really power off (never on a host).
/bin/pvworkload --guest
echo "PVW EXIT rc=$?"
while :; do
    sleep 3600
done
