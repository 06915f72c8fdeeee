"""The client library: ``pyvirt.open(uri)`` with libvirt-python's names.

``error``       libvirtError (libvirt-python's exception, a VirtError)
``names``       flat VIR_* constants generated from the enums; client-only enums
``params``      typed parameters ↔ Python dicts
``transport``   unix / tcp / ssh byte streams; ``ssh_bridge`` is the remote end of ssh
``events``      domain event callback table
``aio``         the async core: AsyncConnection, AsyncDomain
``sync``        the blocking facade: virConnect, virDomain, open()

Importing this package imports nothing else (``import pyvirt`` must stay cheap).
"""
