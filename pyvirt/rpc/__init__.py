"""libvirt's remote RPC protocol — transport only; nothing here knows what a domain is.

Layers, bottom up (``reference/libvirt-wire.md`` has the wire facts):

``xdr``               Packer/Unpacker; sizes checked before allocation; XDRError only
``types``             declarative descriptors (Struct, Union, Array, ...)
``remote_types``      shared wire types: NonnullDomain, TypedParam, RemoteError
``error``             remote_error <-> VirtError (the one place)
``packet``            framing: length word, 24-byte header, limits, read_packet()
``protocol``          ProcSpec / Program: procedures as data
``remote_protocol``   the REMOTE program table; ``keepalive_protocol``: PING/PONG
``connection``        reader + writer tasks, Runstate, streams registry
``keepalive``         answer PINGs; ping idle peers; close dead ones
``stream``            per-call data streams (tunnelled migration)
``client``            RPCClient: calls by serial, events, keepalive, streams
``workers``           WorkerPool with libvirt's min/max/prio semantics
``server_client``     one server connection: checks, caps, dispatch; Dispatcher/ClientContext
``server``            RPCServer: listeners, accept limits, global caps, admin stats
``testing``           an in-process test program, dispatcher and raw peer
"""
