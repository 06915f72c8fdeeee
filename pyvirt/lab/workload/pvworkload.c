/*
 * pvworkload: the pyvirt test guest's workload (static binary, started by /init).
 *
 * It is the oracle of the migration tests: a heartbeat proves the guest runs, a
 * memory dirtier with a per-page generation pattern proves no guest write is ever
 * lost (the pattern is verified before each rewrite), and an optional disk writer
 * does the same for a block device. It also powers the guest off: on the ACPI power
 * button (QEMU's system_powerdown arrives as KEY_POWER on /dev/input/event*, from the
 * button and evdev drivers /init loads) or pvw.poweroff_after seconds after READY.
 *
 * Configuration comes from the kernel command line (/proc/cmdline):
 *   pvw.dirty_mb=N    working set in MiB (0 = no dirtying)
 *   pvw.dirty_rate=R  MiB/s of 4 KiB pages dirtied (0 = as fast as possible)
 *   pvw.disk=DEV      block device (or file) to write a verified pattern to
 *   pvw.disk_mb=N     how much of the disk to cycle over (default 16)
 *   pvw.disk_rate=R   disk MiB/s (0 = unthrottled, default 1)
 *   pvw.hb_ms=N       heartbeat period (default 200)
 *   pvw.poweroff_after=S  power off S seconds after READY (default 0: never)
 *
 * Console lines (one write(2) each, so they never interleave between processes;
 * pyvirt/lab/guest.py holds the matching regexes):
 *   PVW READY dirty_mb=N dirty_rate=R disk=DEV|none uptime_ms=U
 *   PVW HB <n> t_ms=T passes=P dirtied_mib=M corrupt=C
 *   PVW CORRUPT mem page=I word=W expected=0x.. got=0x.. pass=P
 *   PVW DISKREADY dev=DEV blocks=B direct=0|1
 *   PVW DISK <n> gen=G written=W verified=V corrupt=C
 *   PVW CORRUPT disk block=B expected_gen=G got_gen=H why=magic|block|run|gen|checksum
 *   PVW ERROR <message>
 *   PVW SELFTEST OK|FAIL mem_corrupt=N disk_corrupt=N
 *   PVW POWEROFF reason=acpi|timer     the last line before the guest powers off
 *
 * Options:
 *   --guest               running as the test guest's workload: watch the power button
 *                         and really power off. Without it (on a host) a power-off
 *                         request (the timer) only prints POWEROFF and ends the workload.
 * Host-side options (the binary is static, so tests run it on the host too):
 *   --cmdline STR         use STR instead of /proc/cmdline
 *   --seconds N           stop after N seconds (default: run forever)
 *   --selftest-corrupt    deliberately damage memory (and the disk, if configured)
 *                         and exit 0 only if the verifiers catch exactly that damage
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <linux/input.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define PAGE_SIZE 4096u
#define PAGES_PER_MIB 256u
#define BATCH_PAGES 64u
#define MAX_REPORTS_PER_PASS 8u
#define DISK_BLOCK 4096u
#define DISK_WORDS (DISK_BLOCK / 8u)
#define DISK_MAGIC UINT64_C(0x314b534944575650) /* "PVWDISK1" little-endian */
#define DISK_PROGRESS_NS UINT64_C(1000000000)
#define MAX_INPUTS 8
#define INPUT_DIR "/dev/input"
#define LONG_BITS (8 * sizeof(unsigned long))

/* Probed words: first, last and spread in between on different cache lines, so a
 * partially transferred page is caught as well as a wholly stale one. */
static const unsigned probe_words[] = {0, 73, 146, 219, 292, 365, 438, 511};
#define NPROBE (sizeof(probe_words) / sizeof(probe_words[0]))

struct config {
    unsigned long dirty_mb, dirty_rate, disk_mb, disk_rate, hb_ms, poweroff_after;
    char disk[256];
};

struct options {
    const char *cmdline;        /* NULL: read /proc/cmdline */
    double seconds;
    int selftest, guest;
};

struct mem {
    volatile uint64_t *base;
    size_t npages, cursor;
    uint32_t passes;            /* completed passes; the current pass writes passes+1 */
    uint64_t dirtied, corrupt;
    unsigned reported;          /* CORRUPT lines printed in this pass (flood guard) */
};

/* Power-off requests: KEY_POWER on the watched input devices, or the timer. */
struct power {
    struct pollfd fds[MAX_INPUTS];
    nfds_t nfds;
    uint64_t deadline;          /* pvw.poweroff_after as CLOCK_MONOTONIC ns; 0 = never */
};

struct disk {
    int fd, direct;
    uint64_t nblocks, cursor, run_id;
    uint32_t gen;               /* generation being written (starts at 1) */
    uint64_t written, verified, corrupt;
    unsigned reported;
    uint64_t *buf;              /* one aligned block, required by O_DIRECT */
};

/* ---- output --------------------------------------------------------------- */

/* One formatted line, one write(2): keeps lines whole on the serial console. */
static void out(const char *fmt, ...)
{
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof(line) - 2)
        n = (int)sizeof(line) - 2;
    line[n++] = '\n';
    for (int off = 0; off < n;) {
        ssize_t w = write(STDOUT_FILENO, line + off, (size_t)(n - off));
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        off += (int)w;
    }
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sleep_until(uint64_t deadline)
{
    struct timespec ts = {(time_t)(deadline / 1000000000u), (long)(deadline % 1000000000u)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

static uint64_t uptime_ms(void)
{
    char buf[64] = {0};
    int fd = open("/proc/uptime", O_RDONLY);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    return n > 0 ? (uint64_t)(strtod(buf, NULL) * 1000.0) : 0;
}

/* ---- configuration -------------------------------------------------------- */

static int parse_ulong(const char *s, unsigned long *out_val)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || end == s || (*end && *end != ' ' && *end != '\n') || *s == '-')
        return -1;
    *out_val = v;
    return 0;
}

static int parse_cmdline(const char *cmdline, struct config *cfg)
{
    static const struct { const char *key; size_t off; } keys[] = {
        {"pvw.dirty_mb=", offsetof(struct config, dirty_mb)},
        {"pvw.dirty_rate=", offsetof(struct config, dirty_rate)},
        {"pvw.disk_mb=", offsetof(struct config, disk_mb)},
        {"pvw.disk_rate=", offsetof(struct config, disk_rate)},
        {"pvw.hb_ms=", offsetof(struct config, hb_ms)},
        {"pvw.poweroff_after=", offsetof(struct config, poweroff_after)},
    };
    for (const char *p = cmdline; *p;) {
        while (*p == ' ' || *p == '\n')
            p++;
        size_t len = strcspn(p, " \n");
        for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
            size_t kl = strlen(keys[i].key);
            if (len > kl && strncmp(p, keys[i].key, kl) == 0 &&
                parse_ulong(p + kl, (unsigned long *)((char *)cfg + keys[i].off)) < 0) {
                out("PVW ERROR bad value in %.*s", (int)len, p);
                return -1;
            }
        }
        if (len > 9 && strncmp(p, "pvw.disk=", 9) == 0 && len - 9 < sizeof(cfg->disk))
            snprintf(cfg->disk, sizeof(cfg->disk), "%.*s", (int)(len - 9), p + 9);
        p += len;
    }
    if (cfg->hb_ms == 0 || cfg->disk_mb == 0) {
        out("PVW ERROR pvw.hb_ms and pvw.disk_mb must be positive");
        return -1;
    }
    return 0;
}

static char *read_proc_cmdline(void)
{
    static char buf[4096];
    int fd = open("/proc/cmdline", O_RDONLY);
    if (fd < 0)
        return NULL;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    buf[n > 0 ? n : 0] = '\0';
    return buf;
}

/* ---- memory dirtier and verifier ------------------------------------------ */

/* Generation in the high half, so a CORRUPT line shows how stale a page is; the
 * low half depends on page and word, so a page landing at the wrong address shows
 * too. Generation 0 is fresh anonymous memory: all zero. */
static uint64_t mem_pattern(size_t page, unsigned k, uint32_t gen)
{
    if (gen == 0)
        return 0;
    uint32_t lo = (uint32_t)(((uint64_t)page * NPROBE + k + 1) * UINT64_C(2654435761));
    return ((uint64_t)gen << 32) | lo;
}

static int mem_init(struct mem *m, unsigned long mb)
{
    memset(m, 0, sizeof(*m));
    m->npages = (size_t)mb * PAGES_PER_MIB;
    if (m->npages == 0)
        return 0;
    void *p = mmap(NULL, m->npages * PAGE_SIZE, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        out("PVW ERROR cannot map %lu MiB: %s", mb, strerror(errno));
        return -1;
    }
    m->base = p;
    return 0;
}

/* Verify one page still holds the previous pass's values, then write this pass's. */
static void mem_dirty_page(struct mem *m, size_t page)
{
    volatile uint64_t *w = m->base + page * (PAGE_SIZE / 8);
    uint32_t gen = m->passes + 1;
    for (unsigned k = 0; k < NPROBE; k++) {
        uint64_t want = mem_pattern(page, k, gen - 1), got = w[probe_words[k]];
        if (got == want)
            continue;
        m->corrupt++;
        if (m->reported++ < MAX_REPORTS_PER_PASS)
            out("PVW CORRUPT mem page=%zu word=%u expected=0x%016" PRIx64 " got=0x%016" PRIx64
                " pass=%" PRIu32, page, probe_words[k], want, got, gen);
        break; /* one line per bad page is enough to diagnose it */
    }
    for (unsigned k = 0; k < NPROBE; k++)
        w[probe_words[k]] = mem_pattern(page, k, gen);
    m->dirtied++;
}

static void mem_step(struct mem *m, size_t count)
{
    while (count--) {
        mem_dirty_page(m, m->cursor);
        if (++m->cursor == m->npages) {
            m->cursor = 0;
            m->passes++;
            m->reported = 0;
        }
    }
}

/* ---- disk writer and verifier --------------------------------------------- */

static uint64_t disk_checksum(const uint64_t *w)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    for (unsigned i = 0; i < DISK_WORDS - 1; i++)
        h = (h ^ w[i]) * UINT64_C(0x100000001b3);
    return h;
}

static void disk_fill(uint64_t *w, uint64_t block, uint32_t gen, uint64_t run_id)
{
    w[0] = DISK_MAGIC;
    w[1] = block;
    w[2] = gen;
    w[3] = run_id;
    for (unsigned i = 4; i < DISK_WORDS - 1; i++)
        w[i] = ((block << 32) | gen) ^ (i * UINT64_C(0x9e3779b97f4a7c15));
    w[DISK_WORDS - 1] = disk_checksum(w);
}

/* Returns NULL if the block is (block, gen) of this run, else why it is not. */
static const char *disk_check(const uint64_t *w, uint64_t block, uint32_t gen, uint64_t run)
{
    if (w[0] != DISK_MAGIC)
        return "magic";
    if (w[DISK_WORDS - 1] != disk_checksum(w))
        return "checksum";
    if (w[1] != block)
        return "block";
    if (w[3] != run)
        return "run";
    return w[2] == gen ? NULL : "gen";
}

static int disk_io(struct disk *d, int writing, uint64_t block)
{
    off_t off = (off_t)(block * DISK_BLOCK);
    ssize_t n = writing ? pwrite(d->fd, d->buf, DISK_BLOCK, off)
                        : pread(d->fd, d->buf, DISK_BLOCK, off);
    if (n == (ssize_t)DISK_BLOCK)
        return 0;
    out("PVW ERROR disk %s block %" PRIu64 ": %s", writing ? "write" : "read", block,
        n < 0 ? strerror(errno) : "short transfer");
    return -1;
}

static int disk_verify(struct disk *d, uint64_t block, uint32_t gen)
{
    if (disk_io(d, 0, block) < 0)
        return -1;
    const char *why = disk_check(d->buf, block, gen, d->run_id);
    d->verified++;
    if (!why)
        return 0;
    d->corrupt++;
    if (d->reported++ < MAX_REPORTS_PER_PASS)
        out("PVW CORRUPT disk block=%" PRIu64 " expected_gen=%" PRIu32 " got_gen=%" PRIu64
            " why=%s", block, gen, d->buf[2], why);
    return 0;
}

/* One block of a pass: check the previous generation survived, write this one, read
 * it back. Generation 1 has nothing of ours to check yet. */
static int disk_step(struct disk *d)
{
    uint64_t b = d->cursor;
    if (d->gen > 1 && disk_verify(d, b, d->gen - 1) < 0)
        return -1;
    disk_fill(d->buf, b, d->gen, d->run_id);
    if (disk_io(d, 1, b) < 0 || (!d->direct && fdatasync(d->fd) < 0))
        return -1;
    d->written++;
    if (disk_verify(d, b, d->gen) < 0)
        return -1;
    if (++d->cursor == d->nblocks) {
        d->cursor = 0;
        d->gen++;
        d->reported = 0;
    }
    return 0;
}

static int disk_open(struct disk *d, const char *path, unsigned long mb)
{
    memset(d, 0, sizeof(*d));
    d->direct = 1;
    d->fd = open(path, O_RDWR | O_DIRECT | O_DSYNC);
    if (d->fd < 0 && errno == EINVAL) { /* e.g. tmpfs on the host: fall back to fdatasync */
        d->direct = 0;
        d->fd = open(path, O_RDWR | O_DSYNC);
    }
    if (d->fd < 0) {
        out("PVW ERROR cannot open disk %s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    uint64_t size = 0;
    if (fstat(d->fd, &st) == 0 && S_ISBLK(st.st_mode))
        ioctl(d->fd, BLKGETSIZE64, &size);
    else if (fstat(d->fd, &st) == 0)
        size = (uint64_t)st.st_size;
    if (size > (uint64_t)mb << 20)
        size = (uint64_t)mb << 20;
    d->nblocks = size / DISK_BLOCK;
    d->gen = 1;
    d->run_id = now_ns() ^ ((uint64_t)getpid() << 40);
    if (d->nblocks == 0 || posix_memalign((void **)&d->buf, DISK_BLOCK, DISK_BLOCK)) {
        out("PVW ERROR disk %s too small or no memory", path);
        return -1;
    }
    out("PVW DISKREADY dev=%s blocks=%" PRIu64 " direct=%d", path, d->nblocks, d->direct);
    return 0;
}

/* The disk runs in its own process so slow I/O never delays the heartbeat. */
static pid_t disk_start(const struct config *cfg, uint64_t stop_at)
{
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    struct disk d;
    if (disk_open(&d, cfg->disk, cfg->disk_mb) < 0)
        _exit(1);
    double per_block_ns = cfg->disk_rate ? 1e9 / ((double)cfg->disk_rate * 256.0) : 0;
    uint64_t start = now_ns(), next_report = start + DISK_PROGRESS_NS, seq = 0;
    for (uint64_t done = 0;; done++) {
        if (disk_step(&d) < 0)
            _exit(1);
        uint64_t t = now_ns();
        if (t >= next_report) {
            out("PVW DISK %" PRIu64 " gen=%" PRIu32 " written=%" PRIu64 " verified=%" PRIu64
                " corrupt=%" PRIu64, seq++, d.gen, d.written, d.verified, d.corrupt);
            next_report = t + DISK_PROGRESS_NS;
        }
        if (stop_at && t >= stop_at)
            _exit(0);
        if (per_block_ns > 0) {
            uint64_t due = start + (uint64_t)((double)(done + 1) * per_block_ns);
            if (t > due + DISK_PROGRESS_NS) /* after a long stall, don't burst to catch up */
                start += t - DISK_PROGRESS_NS - due;
            else if (due > t)
                sleep_until(due);
        }
    }
}

/* ---- power-off: ACPI power button and timer ----------------------------------- */

static int has_power_key(int fd)
{
    unsigned long bits[KEY_MAX / LONG_BITS + 1];
    memset(bits, 0, sizeof(bits));
    if (ioctl(fd, EVIOCGBIT(EV_KEY, sizeof(bits)), bits) < 0)
        return 0;
    return (int)((bits[KEY_POWER / LONG_BITS] >> (KEY_POWER % LONG_BITS)) & 1);
}

/* Watch every input device that can send KEY_POWER (in the guest: the ACPI "Power
 * Button"). devtmpfs made the nodes when /init loaded evdev. Returns how many. */
static nfds_t power_open_inputs(struct power *pw, const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    for (struct dirent *e; pw->nfds < MAX_INPUTS && (e = readdir(d));) {
        char path[300];
        if (strncmp(e->d_name, "event", 5) != 0)
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
        if (fd >= 0 && has_power_key(fd))
            pw->fds[pw->nfds++] = (struct pollfd){.fd = fd, .events = POLLIN};
        else if (fd >= 0)
            close(fd);
    }
    closedir(d);
    return pw->nfds;
}

/* Drain one device's queued events; 1 if one of them pressed KEY_POWER. */
static int power_key_pressed(int fd)
{
    struct input_event ev[16];
    int pressed = 0;
    ssize_t n;
    while ((n = read(fd, ev, sizeof(ev))) > 0)
        for (size_t i = 0; i < (size_t)n / sizeof(ev[0]); i++)
            if (ev[i].type == EV_KEY && ev[i].code == KEY_POWER && ev[i].value != 0)
                pressed = 1;
    return pressed;
}

static int power_pressed(struct power *pw)
{
    int pressed = 0;
    for (nfds_t i = 0; i < pw->nfds; i++) {
        short rev = pw->fds[i].revents;
        if ((rev & POLLIN) && power_key_pressed(pw->fds[i].fd))
            pressed = 1;
        if (rev & (POLLERR | POLLHUP | POLLNVAL)) { /* device gone: stop watching it */
            close(pw->fds[i].fd);
            pw->fds[i].fd = -1;
        }
    }
    return pressed;
}

/* Wait until `until` (CLOCK_MONOTONIC ns; 0: just look) for a power-off request.
 * Returns its reason, "acpi" or "timer", or NULL once `until` has passed. */
static const char *power_wait(struct power *pw, uint64_t until)
{
    for (int looked = 0;; looked = 1) {
        uint64_t t = now_ns();
        if (pw->deadline && t >= pw->deadline)
            return "timer";
        if (looked && t >= until)
            return NULL;
        uint64_t end = pw->deadline && pw->deadline < until ? pw->deadline : until;
        uint64_t left = end > t ? end - t : 0;
        struct timespec ts = {(time_t)(left / 1000000000u), (long)(left % 1000000000u)};
        int r = ppoll(pw->fds, pw->nfds, &ts, NULL);
        if (r > 0 && power_pressed(pw))
            return "acpi";
        if (r < 0 && errno != EINTR)
            sleep_until(end);
    }
}

static void on_alarm(int sig)
{
    (void)sig; /* only interrupts tcdrain() */
}

/* Let the console transmit what we wrote, for at most `seconds`: a stuck console
 * must not keep the machine from powering off. */
static void drain_console(unsigned seconds)
{
    struct sigaction sa = {.sa_handler = on_alarm}; /* no SA_RESTART: EINTR ends the wait */
    sigaction(SIGALRM, &sa, NULL);
    alarm(seconds);
    tcdrain(STDOUT_FILENO);
    alarm(0);
}

/* The last act: stop the disk writer, say why, flush and power off. Without --guest
 * (on a host) the workload just ends instead. Returns only if powering off failed. */
static int power_off(const char *why, pid_t disk_pid, int guest)
{
    if (disk_pid > 0) {
        kill(disk_pid, SIGKILL);
        waitpid(disk_pid, NULL, 0);
    }
    out("PVW POWEROFF reason=%s", why);
    if (!guest)
        return 0;
    sync();
    drain_console(2); /* the line must leave the UART before the machine stops */
    reboot(RB_POWER_OFF);
    out("PVW ERROR power-off failed: %s", strerror(errno));
    return 1;
}

/* ---- main loop ------------------------------------------------------------ */

/* Token bucket in pages: refilled at the configured rate, capped at 200 ms worth so
 * a pause (e.g. migration downtime) is not followed by a burst. */
static size_t mem_budget(double *tokens, uint64_t *last, uint64_t t, unsigned long rate)
{
    if (rate == 0)
        return BATCH_PAGES;
    double pps = (double)rate * PAGES_PER_MIB, cap = pps / 5 > BATCH_PAGES ? pps / 5 : BATCH_PAGES;
    *tokens += (double)(t - *last) * pps / 1e9;
    *last = t;
    if (*tokens > cap)
        *tokens = cap;
    if (*tokens < BATCH_PAGES) /* whole batches only: fewer, longer sleeps */
        return 0;
    *tokens -= BATCH_PAGES;
    return BATCH_PAGES;
}

/* Heartbeat and dirty memory until stop_at (0: forever) or a power-off request;
 * returns the request's reason, or NULL at stop_at. */
static const char *run(const struct config *cfg, struct mem *m, struct power *pw,
                       uint64_t stop_at)
{
    uint64_t hb_ns = (uint64_t)cfg->hb_ms * 1000000u, start = now_ns(), next_hb = start;
    uint64_t hb = 0, last = start;
    double tokens = 0;
    const char *why;
    for (;;) {
        uint64_t t = now_ns();
        if (t >= next_hb) {
            out("PVW HB %" PRIu64 " t_ms=%" PRIu64 " passes=%" PRIu32 " dirtied_mib=%" PRIu64
                " corrupt=%" PRIu64, hb++, (t - start) / 1000000u, m->passes,
                m->dirtied / PAGES_PER_MIB, m->corrupt);
            next_hb = next_hb + hb_ns > t ? next_hb + hb_ns : t + hb_ns;
            if ((why = power_wait(pw, 0))) /* an unthrottled dirtier never sleeps */
                return why;
        }
        if (stop_at && t >= stop_at)
            return NULL;
        size_t n = m->npages ? mem_budget(&tokens, &last, t, cfg->dirty_rate) : 0;
        if (n > 0) {
            mem_step(m, n);
            continue;
        }
        uint64_t wake = next_hb;
        if (m->npages) { /* wake when a batch's worth of tokens has accrued */
            double pps = (double)cfg->dirty_rate * PAGES_PER_MIB;
            uint64_t refill = t + (uint64_t)(((double)BATCH_PAGES - tokens) * 1e9 / pps);
            wake = refill < wake ? refill : wake;
        }
        if ((why = power_wait(pw, wake)))
            return why;
    }
}

/* Damage memory (and disk) on purpose; the verifiers must report exactly that. */
static int selftest(const struct config *cfg)
{
    struct mem m;
    if (mem_init(&m, cfg->dirty_mb ? cfg->dirty_mb : 1) < 0)
        return 1;
    mem_step(&m, m.npages);                           /* pass 1 */
    m.base[3 * (PAGE_SIZE / 8) + probe_words[2]] ^= 1; /* a middle word, not the first */
    mem_step(&m, m.npages);                           /* pass 2 must catch page 3 */
    uint64_t disk_corrupt = 0, want_disk = 0;
    if (cfg->disk[0]) {
        struct disk d;
        if (disk_open(&d, cfg->disk, cfg->disk_mb) < 0 || d.nblocks < 6)
            return 1;
        for (uint64_t i = 0; i < 2 * d.nblocks; i++)  /* generations 1 and 2 */
            if (disk_step(&d) < 0)
                return 1;
        disk_fill(d.buf, 5, 1, d.run_id);            /* block 5: a lost write (stale gen) */
        if (disk_io(&d, 1, 5) < 0 || disk_io(&d, 0, 2) < 0)
            return 1;
        d.buf[100] ^= UINT64_C(1) << 17;              /* block 2: a flipped bit */
        if (disk_io(&d, 1, 2) < 0)
            return 1;
        for (uint64_t i = 0; i < d.nblocks; i++)      /* generation 3 must catch both */
            if (disk_step(&d) < 0)
                return 1;
        disk_corrupt = d.corrupt;
        want_disk = 2;
    }
    int ok = m.corrupt == 1 && disk_corrupt == want_disk;
    out("PVW SELFTEST %s mem_corrupt=%" PRIu64 " disk_corrupt=%" PRIu64, ok ? "OK" : "FAIL",
        m.corrupt, disk_corrupt);
    return ok ? 0 : 1;
}

static int parse_args(int argc, char **argv, struct options *o)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--cmdline") == 0 && i + 1 < argc)
            o->cmdline = argv[++i];
        else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
            o->seconds = strtod(argv[++i], NULL);
        else if (strcmp(argv[i], "--selftest-corrupt") == 0)
            o->selftest = 1;
        else if (strcmp(argv[i], "--guest") == 0)
            o->guest = 1;
        else {
            fprintf(stderr, "usage: %s [--guest] [--cmdline STR] [--seconds N]"
                    " [--selftest-corrupt]\n", argv[0]);
            return -1;
        }
    }
    return 0;
}

/* The workload proper: READY, the disk writer, the main loop, then power-off. */
static int workload(const struct config *cfg, const struct options *o)
{
    struct mem m;
    struct power pw = {.nfds = 0};
    if (mem_init(&m, cfg->dirty_mb) < 0)
        return 1;
    if (o->guest && power_open_inputs(&pw, INPUT_DIR) == 0)
        out("PVW ERROR no power button: no %s/event* sends KEY_POWER", INPUT_DIR);
    uint64_t t0 = now_ns(), stop_at = o->seconds > 0 ? t0 + (uint64_t)(o->seconds * 1e9) : 0;
    out("PVW READY dirty_mb=%lu dirty_rate=%lu disk=%s uptime_ms=%" PRIu64, cfg->dirty_mb,
        cfg->dirty_rate, cfg->disk[0] ? cfg->disk : "none", uptime_ms());
    pw.deadline = cfg->poweroff_after ? t0 + (uint64_t)cfg->poweroff_after * 1000000000u : 0;
    pid_t disk_pid = cfg->disk[0] ? disk_start(cfg, stop_at) : 0;
    if (disk_pid < 0)
        out("PVW ERROR cannot start the disk writer: %s", strerror(errno));
    const char *why = run(cfg, &m, &pw, stop_at);
    if (why)
        return power_off(why, disk_pid, o->guest);
    if (disk_pid > 0) {
        kill(disk_pid, SIGTERM);
        waitpid(disk_pid, NULL, 0);
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct config cfg = {.disk_mb = 16, .disk_rate = 1, .hb_ms = 200};
    struct options o = {.cmdline = NULL};
    if (parse_args(argc, argv, &o) < 0)
        return 2;
    if (!o.cmdline && !(o.cmdline = read_proc_cmdline())) {
        out("PVW ERROR cannot read /proc/cmdline: %s", strerror(errno));
        return 2;
    }
    if (parse_cmdline(o.cmdline, &cfg) < 0)
        return 2;
    return o.selftest ? selftest(&cfg) : workload(&cfg, &o);
}
