"""pyvirsh: a virsh-compatible shell (entry point :func:`pyvirt.virsh.main.run`).

Modules: ``main`` (global options, entry points), ``options`` (grammar and parser),
``registry`` (the command table), ``shell`` (connection, running commands, interactive
mode), ``output`` (tables and help layouts), ``commands_*`` (handlers, imported lazily),
``migrate`` (``migrate``'s options → MigrateRequest), ``api`` (the client API relied on).
"""
