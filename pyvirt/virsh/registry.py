"""The command table: every pyvirsh command as data (options, help texts, handler).

Names, option tables (order, kinds, which options bare words fill) and help texts are
virsh 9.0's, so that ``help CMD`` and the parser behave byte for byte like the stock virsh.
Handlers are ``"module:function"`` strings under :mod:`pyvirt.virsh`, imported only when
the command runs, which keeps start-up light.

Options pyvirsh parses but cannot honour (a console, file-descriptor passing, storage
volume removal) are kept in the tables so that help and parsing match, and their handlers
refuse them with a clear error.
"""

from __future__ import annotations

from pyvirt.virsh.options import Command, Opt, alias, argv, data, flag, number, string

_DOMAIN = data("domain", "domain name, id or uuid")
_FILE = data("file", "file containing an XML domain description")

_START_COMMON = (
    flag("console", "attach to console after creation"),
    flag("paused", "leave the guest paused after creation"),
    flag("autodestroy", "automatically destroy the guest when virsh disconnects"),
)
_PASS_FDS = string("pass-fds", "pass file descriptors N,M,... to the guest")
_RESET_NVRAM = flag("reset-nvram", "re-initialize NVRAM from its pristine template")
_SHUTDOWN_MODE = string("mode", "shutdown mode: acpi|agent|initctl|signal|paravirt")

_LIST_OPTS = (
    flag("inactive", "list inactive domains"),
    flag("all", "list inactive & active domains"),
    flag("transient", "list transient domains"),
    flag("persistent", "list persistent domains"),
    flag("with-snapshot", "list domains with existing snapshot"),
    flag("without-snapshot", "list domains without a snapshot"),
    flag("with-checkpoint", "list domains with existing checkpoint"),
    flag("without-checkpoint", "list domains without a checkpoint"),
    flag("state-running", "list domains in running state"),
    flag("state-paused", "list domains in paused state"),
    flag("state-shutoff", "list domains in shutoff state"),
    flag("state-other", "list domains in other states"),
    flag("autostart", "list domains with autostart enabled"),
    flag("no-autostart", "list domains with autostart disabled"),
    flag("with-managed-save", "list domains with managed save state"),
    flag("without-managed-save", "list domains without managed save"),
    flag("uuid", "list uuid's only"),
    flag("name", "list domain names only"),
    flag("id", "list domain IDs only"),
    flag("table", "list table (default)"),
    flag("managed-save", "mark inactive domains with managed save state"),
    flag("title", "show domain title"),
)

_UNDEFINE_OPTS = (
    _DOMAIN,
    flag("managed-save", "remove domain managed state file"),
    string("storage", "remove associated storage volumes (comma separated list of targets "
           "or source paths) (see domblklist)"),
    flag("remove-all-storage", "remove all associated storage volumes (use with caution)"),
    alias("delete-snapshots", "delete-storage-volume-snapshots"),
    flag("delete-storage-volume-snapshots", "delete snapshots associated with volume(s), "
         "requires --remove-all-storage (must be supported by storage driver)"),
    flag("wipe-storage", "wipe data on the removed volumes"),
    flag("snapshots-metadata", "remove all domain snapshot metadata (vm must be inactive)"),
    flag("checkpoints-metadata", "remove all domain checkpoint metadata (vm must be inactive)"),
    flag("nvram", "remove nvram file"),
    flag("keep-nvram", "keep nvram file"),
    flag("tpm", "remove TPM state"),
    flag("keep-tpm", "keep TPM state"),
)

_MIGRATE_FLAGS = (
    flag("live", "live migration"),
    flag("offline", "offline migration"),
    flag("p2p", "peer-2-peer migration"),
    flag("direct", "direct migration"),
    alias("tunneled", "tunnelled"),
    flag("tunnelled", "tunnelled migration"),
    flag("persistent", "persist VM on destination"),
    flag("undefinesource", "undefine VM on source"),
    flag("suspend", "do not restart the domain on the destination host"),
    flag("copy-storage-all", "migration with non-shared storage with full disk copy"),
    flag("copy-storage-inc", "migration with non-shared storage with incremental copy (same "
         "base image shared between source and destination)"),
    flag("copy-storage-synchronous-writes", "force guest disk writes to be synchronously "
         "written to the destination to improve storage migration convergence"),
    flag("change-protection", "prevent any configuration changes to domain until migration "
         "ends"),
    flag("unsafe", "force migration even if it may be unsafe"),
    flag("verbose", "display the progress of migration"),
    flag("compressed", "compress repeated pages during live migration"),
    flag("auto-converge", "force convergence during live migration"),
    flag("rdma-pin-all", "pin all memory before starting RDMA live migration"),
    flag("abort-on-error", "abort on soft errors during migration"),
    flag("postcopy", "enable post-copy migration; switch to it using migrate-postcopy "
         "command"),
    flag("postcopy-after-precopy", "automatically switch to post-copy migration after one "
         "pass of pre-copy"),
    flag("postcopy-resume", "resume failed post-copy migration"),
    flag("zerocopy", "use zero-copy mechanism for migrating memory pages"),
)

_MIGRATE_VALUES = (
    string("migrateuri", "migration URI, usually can be omitted"),
    string("graphicsuri", "graphics URI to be used for seamless graphics migration"),
    string("listen-address", "listen address that destination should bind to for incoming "
           "migration"),
    string("dname", "rename to new name during migration (if supported)"),
    number("timeout", "run action specified by --timeout-* option (suspend by default) if "
           "live migration exceeds timeout (in seconds)"),
    flag("timeout-suspend", "suspend the guest after timeout"),
    flag("timeout-postcopy", "switch to post-copy after timeout"),
    string("xml", "filename containing updated XML for the target"),
    string("migrate-disks", "comma separated list of disks to be migrated"),
    number("disks-port", "port to use by target server for incoming disks migration"),
    string("disks-uri", "URI to use for disks migration (overrides --disks-port)"),
    string("comp-methods", "comma separated list of compression methods to be used"),
    number("comp-mt-level", "compress level for multithread compression"),
    number("comp-mt-threads", "number of compression threads for multithread compression"),
    number("comp-mt-dthreads", "number of decompression threads for multithread "
           "compression"),
    number("comp-xbzrle-cache", "page cache size for xbzrle compression"),
    number("auto-converge-initial", "initial CPU throttling rate for auto-convergence"),
    number("auto-converge-increment", "CPU throttling rate increment for auto-convergence"),
    string("persistent-xml", "filename containing updated persistent XML for the target"),
    flag("tls", "use TLS for migration"),
    number("postcopy-bandwidth", "post-copy migration bandwidth limit in MiB/s"),
    flag("parallel", "enable parallel migration"),
    number("parallel-connections", "number of connections for parallel migration"),
    number("bandwidth", "migration bandwidth limit in MiB/s"),
    string("tls-destination", "override the destination host name used for TLS "
           "verification"),
)

_MIGRATE_OPTS = (
    _DOMAIN,
    data("desturi", "connection URI of the destination host as seen from the client(normal "
         "migration) or source(p2p migration)"),
    *_MIGRATE_FLAGS,
    *_MIGRATE_VALUES,
)

_DOM = "commands_domain:"
_LIFE = "commands_lifecycle:"
_MIG = "commands_migrate:"
_HOST = "commands_host:"


def _domain_commands() -> tuple[Command, ...]:
    return (
        Command("autostart", "autostart a domain",
                "Configure a domain to be automatically started at boot.",
                (_DOMAIN, flag("disable", "disable autostarting")), _LIFE + "cmd_autostart"),
        Command("create", "create a domain from an XML file", "Create a domain.",
                (_FILE, *_START_COMMON, _PASS_FDS,
                 flag("validate", "validate the XML against the schema"), _RESET_NVRAM),
                _LIFE + "cmd_create"),
        Command("define", "define (but don't start) a domain from an XML file",
                "Define a domain.",
                (_FILE, flag("validate", "validate the XML against the schema")),
                _LIFE + "cmd_define"),
        Command("destroy", "destroy (stop) a domain",
                "Forcefully stop a given domain, but leave its resources intact.",
                (_DOMAIN, flag("graceful", "terminate gracefully"),
                 flag("remove-logs", "remove domain logs")), _LIFE + "cmd_destroy"),
        Command("domid", "convert a domain name or UUID to domain id", "",
                (data("domain", "domain name or uuid"),), _DOM + "cmd_domid"),
        Command("domjobabort", "abort active domain job",
                "Aborts the currently running domain job",
                (_DOMAIN, flag("postcopy", "interrupt post-copy migration")),
                _MIG + "cmd_domjobabort"),
        Command("domjobinfo", "domain job information",
                "Returns information about jobs running on a domain.",
                (_DOMAIN, flag("completed", "return statistics of a recently completed job"),
                 flag("keep-completed", "don't destroy statistics of a recently completed "
                      "job when reading"),
                 flag("anystats", "print statistics for any kind of job (even failed ones)"),
                 flag("rawstats", "print the raw data returned by libvirt")),
                _MIG + "cmd_domjobinfo"),
        Command("domname", "convert a domain id or UUID to domain name", "",
                (data("domain", "domain id or uuid"),), _DOM + "cmd_domname"),
        Command("domuuid", "convert a domain name or id to domain UUID", "",
                (data("domain", "domain id or name"),), _DOM + "cmd_domuuid"),
        Command("dumpxml", "domain information in XML",
                "Output the domain information as an XML dump to stdout.",
                (_DOMAIN, flag("inactive", "show inactive defined XML"),
                 flag("security-info", "include security sensitive information in XML dump"),
                 flag("update-cpu", "update guest CPU according to host CPU"),
                 flag("migratable", "provide XML suitable for migrations"),
                 string("xpath", "xpath expression to filter the XML document",
                        positional=False),
                 flag("wrap", "wrap xpath results in an common root element")),
                _DOM + "cmd_dumpxml"),
        *_migrate_commands(),
        *_lifecycle_commands(),
    )


def _migrate_commands() -> tuple[Command, ...]:
    return (
        Command("migrate", "migrate domain to another host",
                "Migrate domain to another host.  Add --live for live migration.",
                _MIGRATE_OPTS, _MIG + "cmd_migrate"),
        Command("migrate-setmaxdowntime", "set maximum tolerable downtime",
                "Set maximum tolerable downtime of a domain which is being live-migrated to "
                "another host.",
                (_DOMAIN, number("downtime", "maximum tolerable downtime (in milliseconds) for "
                                 "migration", required=True)),
                _MIG + "cmd_setmaxdowntime"),
        Command("migrate-getmaxdowntime", "get maximum tolerable downtime",
                "Get maximum tolerable downtime of a domain which is being live-migrated to "
                "another host.", (_DOMAIN,), _MIG + "cmd_getmaxdowntime"),
        Command("migrate-compcache", "get/set compression cache size",
                "Get/set size of the cache (in bytes) used for compressing repeatedly "
                "transferred memory pages during live migration.",
                (_DOMAIN, number("size", "requested size of the cache (in bytes) used for "
                                 "compression", positional=False)),
                _MIG + "cmd_compcache"),
        Command("migrate-setspeed", "Set the maximum migration bandwidth",
                "Set the maximum migration bandwidth (in MiB/s) for a domain which is being "
                "migrated to another host.",
                (_DOMAIN, number("bandwidth", "migration bandwidth limit in MiB/s",
                                 required=True),
                 flag("postcopy", "set post-copy migration bandwidth")),
                _MIG + "cmd_setspeed"),
        Command("migrate-getspeed", "Get the maximum migration bandwidth",
                "Get the maximum migration bandwidth (in MiB/s) for a domain.",
                (_DOMAIN, flag("postcopy", "get post-copy migration bandwidth")),
                _MIG + "cmd_getspeed"),
        Command("migrate-postcopy", "Switch running migration from pre-copy to post-copy",
                "Switch running migration from pre-copy to post-copy. The migration must have "
                "been started with --postcopy option.", (_DOMAIN,), _MIG + "cmd_postcopy"),
    )


def _lifecycle_commands() -> tuple[Command, ...]:
    return (
        Command("reboot", "reboot a domain", "Run a reboot command in the target domain.",
                (_DOMAIN, _SHUTDOWN_MODE), _LIFE + "cmd_reboot"),
        Command("resume", "resume a domain", "Resume a previously suspended domain.",
                (_DOMAIN,), _LIFE + "cmd_resume"),
        Command("shutdown", "gracefully shutdown a domain", "Run shutdown in the target domain.",
                (_DOMAIN, _SHUTDOWN_MODE), _LIFE + "cmd_shutdown"),
        Command("start", "start a (previously defined) inactive domain",
                "Start a domain, either from the last managedsave\n    state, or via a fresh "
                "boot if no managedsave state\n    is present.",
                (data("domain", "name of the inactive domain"), *_START_COMMON,
                 flag("bypass-cache", "avoid file system cache when loading"),
                 flag("force-boot", "force fresh boot by discarding any managed save"),
                 _PASS_FDS, _RESET_NVRAM), _LIFE + "cmd_start"),
        Command("suspend", "suspend a domain", "Suspend a running domain.", (_DOMAIN,),
                _LIFE + "cmd_suspend"),
        Command("undefine", "undefine a domain",
                "Undefine an inactive domain, or convert persistent to transient.",
                _UNDEFINE_OPTS, _LIFE + "cmd_undefine"),
    )


def _monitor_commands() -> tuple[Command, ...]:
    return (
        Command("dominfo", "domain information", "Returns basic information about the domain.",
                (_DOMAIN,), _DOM + "cmd_dominfo"),
        Command("domstate", "domain state", "Returns state about a domain.",
                (_DOMAIN, flag("reason", "also print reason for the state")),
                _DOM + "cmd_domstate"),
        Command("list", "list domains", "Returns list of domains.", _LIST_OPTS,
                _DOM + "cmd_list"),
    )


def _host_commands() -> tuple[Command, ...]:
    return (
        Command("capabilities", "capabilities", "Returns capabilities of hypervisor/driver.",
                (), _HOST + "cmd_capabilities"),
        Command("hostname", "print the hypervisor hostname", "", (), _HOST + "cmd_hostname"),
        Command("uri", "print the hypervisor canonical URI", "", (), _HOST + "cmd_uri"),
        Command("version", "show version", "Display the system version information.",
                (flag("daemon", "report daemon version too"),), _HOST + "cmd_version"),
    )


_HELP_TEXT = ("Prints global help, command specific help, or help for a group of related "
              "commands")


def _virsh_commands() -> tuple[Command, ...]:
    return (
        Command("echo", "echo arguments. Used for internal testing.",
                "Echo back arguments, possibly with quoting. Used for internal testing.",
                (flag("shell", "escape for shell use"), flag("xml", "escape for XML use"),
                 flag("split", "split each argument on ','; ',,' is an escape sequence"),
                 flag("err", "output to stderr"), alias("str", "string"),
                 argv("string", "arguments to echo")),
                _HOST + "cmd_echo", noconnect=True),
        Command("exit", "quit this interactive terminal", "", (), _HOST + "cmd_quit",
                noconnect=True),
        Command("help", "print help",
                "Prints global help, command specific help, or help for a\n    group of "
                "related commands", (string("command", _HELP_TEXT),), _HOST + "cmd_help",
                noconnect=True),
        Command("quit", "quit this interactive terminal", "", (), _HOST + "cmd_quit",
                noconnect=True),
        Command("connect", "(re)connect to hypervisor",
                "Connect to local hypervisor. This is built-in command after shell start up.",
                (string("name", "hypervisor connection URI"),
                 flag("readonly", "read-only connection")),
                _HOST + "cmd_connect", noconnect=True),
    )


class Group:
    __slots__ = ("commands", "keyword", "name")

    def __init__(self, name: str, keyword: str, commands: tuple[Command, ...]) -> None:
        self.name = name
        self.keyword = keyword
        self.commands = commands
        for command in commands:
            command.group = keyword


#: the groups, in virsh's order; within a group, commands keep virsh's order too
GROUPS: tuple[Group, ...] = (
    Group("Domain Management", "domain", _domain_commands()),
    Group("Domain Monitoring", "monitor", _monitor_commands()),
    Group("Host and Hypervisor", "host", _host_commands()),
    Group("Virsh itself", "virsh", _virsh_commands()),
)

COMMANDS: dict[str, Command] = {cmd.name: cmd for grp in GROUPS for cmd in grp.commands}


def find_command(name: str) -> Command | None:
    """Exact names only: virsh 9.0 accepts no abbreviation of command names."""
    return COMMANDS.get(name)


def find_group(name: str) -> Group | None:
    for group in GROUPS:
        if name in (group.name, group.keyword):
            return group
    return None


def all_options() -> list[tuple[Command, Opt]]:
    """Every (command, option) pair, for self-checks in tests."""
    return [(cmd, opt) for cmd in COMMANDS.values() for opt in cmd.opts]
