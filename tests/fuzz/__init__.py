"""A structured wire fuzzer for pyvirtd's RPC programs (issue 10, "hostile input").

Frames are generated from each procedure's argument types (the tables in
:mod:`pyvirt.rpc.remote_protocol`, :mod:`~pyvirt.rpc.qemu_protocol` and
:mod:`~pyvirt.rpc.admin_protocol` describe them as data), as valid, boundary and mutated
encodings, plus frames with mutated headers; they run against an isolated pyvirtd with the
fake QEMU while a watchdog client checks that the daemon keeps answering, and canary files
outside the daemon's directories prove that no hostile name reached them.

* :mod:`tests.fuzz.hostile` — hostile strings, names, URIs, XML and cookies;
* :mod:`tests.fuzz.gen` — type-directed argument encodings;
* :mod:`tests.fuzz.frames` — whole frames: procedure choice, mutations, header faults;
* :mod:`tests.fuzz.harness` — the isolated daemon, canaries, RSS and log checks;
* :mod:`tests.fuzz.session` — one fuzzing connection and the reply oracles;
* :mod:`tests.fuzz.scenarios` — what a worker does on one connection;
* :mod:`tests.fuzz.keeper` — well-formed upkeep: domains to aim at, admin limits put back;
* :mod:`tests.fuzz.watchdog` — the well-formed client timing its listings (own process);
* :mod:`tests.fuzz.runner` and :mod:`tests.fuzz.report` — the run and its verdict;
* :mod:`tests.fuzz.replay` — dumped failing frames sent again to a fresh daemon.

``python -m tests.fuzz --seconds 600 [--seed N]`` (``make fuzz``) runs it long;
``tests/functional/test_wire_fuzz.py`` runs it briefly in ``make test``.
"""
