"""pyvirt: libvirt-compatible virtualization for QEMU guests."""
