/*
 * mt_bench.c - benchmark of durable appends: two baselines and the engine.
 *
 *   mt_bench fsync --dir D [--n N]
 *       A pre-allocated, zero-filled 64 MiB file; N times: pwrite 256 bytes
 *       at the next offset, then fdatasync. The floor for one durable write
 *       on this disk (what the engine's write-ahead file does per group).
 *   mt_bench sync-floor --dir D --writeback MBPS [--seconds S] [--record BYTES] [--grow]
 *       What a write-ahead sync costs while LMDB's pages are written out
 *       beside it, the way a checkpoint does. One thread does what the
 *       engine's sync thread does: pwrite a record (default 4 KiB) at the
 *       next offset of a zero-filled 64 MiB file, fdatasync, and again,
 *       for S seconds (default 10). Another writes MBPS MiB/s of 4 KiB
 *       pages at random offsets of a pre-written 1 GiB file (a commit's
 *       copied pages land all over LMDB's file once it reuses free pages),
 *       a millisecond's worth at a time, and once a second writes the file
 *       out as a checkpoint does: sync_file_range over pieces of 1/256 of
 *       it (at least 1 MiB), each finished before the next, then
 *       fdatasync. Prints one row (sync-floor-header): the syncs'
 *       percentiles, how many took over 5 and 10 ms and how long the
 *       slow ones (> 5 ms) lasted per second, the page rate reached, and
 *       the checkpoints' mean and longest time. With --grow the pages are
 *       appended to a file that starts empty instead (a young engine's
 *       data file grows), and the row is named sync-growMBPS.
 *   mt_bench lmdb --dir D --per-txn K [--events N]
 *       Raw LMDB with its default flags (LMDB syncs on every commit), map
 *       1 GiB: N appends (MDB_APPEND, key u64 BE sequence, ~300-byte
 *       values), K per write transaction.
 *   mt_bench http --url U [--conns C] [--batch B] (--seconds S | --events N)
 *       C keep-alive evhttp connections on one event base, each with one
 *       request in flight, POSTing one structured event (B = 1) or a batch
 *       of B events to U (e.g. http://127.0.0.1:8080/events). Every answer
 *       must be 201; anything else is counted as an error.
 *   mt_bench http --get --url U [--conns C] (--seconds S | --events N)
 *       The same connections sending GET U (e.g. /healthz) instead, each
 *       answer counted as one event and required to be 200: what the HTTP
 *       exchange alone costs on this machine, the floor under the cases
 *       that append.
 *   mt_bench header
 *       Prints the column header of the result rows.
 *
 * Each run prints one result row (see header). Latencies are per operation
 * (pwrite+fdatasync, LMDB transaction begin..commit, HTTP send..answer);
 * percentiles are nearest-rank over the sorted samples. The exit status is
 * 0 only if the run had no error.
 *
 * This is a tool, not part of the engine: it uses lmdb.h directly for its
 * baseline and evhttp as a client, and is single-threaded but for the
 * page writer of sync-floor.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <lmdb.h>

#define EVENT_SIZE 300            /* bytes of one JSON event / LMDB value */
#define FSYNC_FILE_SIZE (64u << 20)
#define FSYNC_WRITE 256
#define SUBJECTS 1000
#define MAX_CONNS 1024
#define MAX_BATCH 10000
#define MAX_ERRORS_SHOWN 5

/* ---- helpers ---- */

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("mt_bench: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

static uint64_t parse_u64(const char *opt, const char *s, uint64_t min, uint64_t max)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v < min || v > max) {
        die("--%s: '%s' is not a number in [%" PRIu64 ", %" PRIu64 "]", opt, s, min, max);
    }
    return v;
}

/* A growable array of latency samples, in nanoseconds. */
typedef struct samples {
    uint64_t *v;
    size_t n, cap;
} samples;

static void samples_add(samples *s, uint64_t ns)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 4096;
        s->v = realloc(s->v, s->cap * sizeof *s->v);
        if (!s->v) {
            die("out of memory");
        }
    }
    s->v[s->n++] = ns;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
    return x < y ? -1 : x > y;
}

/* Nearest rank on the sorted samples: the smallest value >= p% of them. */
static double pct_ms(const samples *s, double p)
{
    if (s->n == 0) {
        return 0;
    }
    size_t rank = (size_t) ((p / 100.0) * (double) s->n + 0.999999);
    if (rank < 1) {
        rank = 1;
    }
    if (rank > s->n) {
        rank = s->n;
    }
    return (double) s->v[rank - 1] / 1e6;
}

static void print_header(void)
{
    printf("%-16s %9s %8s %7s %10s %9s %8s %8s %8s %7s\n", "case", "events", "ops", "secs",
           "events/s", "ops/s", "p50_ms", "p99_ms", "max_ms", "errors");
}

/*
 * One result row. 'ops' are the timed operations (syncs, transactions,
 * HTTP requests); 'events' what they carried.
 */
static void print_row(const char *name, uint64_t events, samples *s, double secs,
                      uint64_t errors)
{
    qsort(s->v, s->n, sizeof *s->v, cmp_u64);
    double max = s->n ? (double) s->v[s->n - 1] / 1e6 : 0;
    printf("%-16s %9" PRIu64 " %8zu %7.2f %10.0f %9.0f %8.3f %8.3f %8.3f %7" PRIu64 "\n", name,
           events, s->n, secs, secs > 0 ? (double) events / secs : 0,
           secs > 0 ? (double) s->n / secs : 0, pct_ms(s, 50), pct_ms(s, 99), max, errors);
    fflush(stdout);
    if (errors) {
        fprintf(stderr,
                "\n!!!!!!!! mt_bench %s: %" PRIu64 " ERRORS - these numbers are not valid "
                "!!!!!!!!\n\n",
                name, errors);
    }
}

static void make_dir(const char *dir)
{
    if (mkdir(dir, 0700) && errno != EEXIST) {
        die("mkdir %s: %s", dir, strerror(errno));
    }
}

/* ---- fsync baseline ---- */

static int cmd_fsync(int argc, char **argv)
{
    static const struct option opts[] = {
        {"dir", required_argument, NULL, 'd'},
        {"n", required_argument, NULL, 'n'},
        {NULL, 0, NULL, 0},
    };
    const char *dir = NULL;
    uint64_t n = 2000;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'd': dir = optarg; break;
        case 'n': n = parse_u64("n", optarg, 1, 100000000); break;
        default: die("usage: mt_bench fsync --dir D [--n N]");
        }
    }
    if (!dir) {
        die("fsync: --dir is required");
    }
    make_dir(dir);
    char path[4096];
    snprintf(path, sizeof path, "%s/fsync.dat", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        die("open %s: %s", path, strerror(errno));
    }
    /* Zero-filled and synced once, as the engine's write-ahead file: the
     * timed syncs then write data blocks only, never block allocations. */
    static char zeros[1 << 20];
    for (uint64_t off = 0; off < FSYNC_FILE_SIZE; off += sizeof zeros) {
        if (pwrite(fd, zeros, sizeof zeros, (off_t) off) != (ssize_t) sizeof zeros) {
            die("zero-fill %s: %s", path, strerror(errno));
        }
    }
    if (fsync(fd)) {
        die("fsync %s: %s", path, strerror(errno));
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }

    char rec[FSYNC_WRITE];
    memset(rec, 'r', sizeof rec);
    samples s = {0};
    uint64_t errors = 0, off = 0;
    uint64_t t0 = now_ns();
    for (uint64_t i = 0; i < n; i++) {
        uint64_t a = now_ns();
        if (pwrite(fd, rec, sizeof rec, (off_t) off) != (ssize_t) sizeof rec || fdatasync(fd)) {
            fprintf(stderr, "mt_bench fsync: %s\n", strerror(errno));
            errors++;
            continue;
        }
        samples_add(&s, now_ns() - a);
        off += sizeof rec;
        if (off + sizeof rec > FSYNC_FILE_SIZE) {
            off = 0;
        }
    }
    double secs = (double) (now_ns() - t0) / 1e9;
    close(fd);
    unlink(path);
    print_row("fsync", s.n, &s, secs, errors);
    free(s.v);
    return errors ? 1 : 0;
}

/* ---- the write-ahead sync beside a checkpoint's writeback ---- */

#define FLOOR_PAGE 4096
#define FLOOR_PAGES_FILE (1u << 30)

typedef struct floor_bg {
    int fd;
    uint64_t mbps;
    bool grow;            /* append pages to a file that starts empty */
    atomic_bool stop;
    uint64_t pages;       /* written */
    samples ckpt;         /* each checkpoint's writeback + fdatasync */
    uint64_t errors;
} floor_bg;

static void sleep_until(uint64_t t)
{
    uint64_t now = now_ns();
    if (t > now) {
        struct timespec ts = {(time_t) ((t - now) / 1000000000u), (long) ((t - now) % 1000000000u)};
        nanosleep(&ts, NULL);
    }
}

static void *floor_writer(void *arg)
{
    floor_bg *bg = arg;
    static char page[FLOOR_PAGE];
    memset(page, 'p', sizeof page);
    uint64_t rnd = 0x9e3779b97f4a7c15u, npages = FLOOR_PAGES_FILE / FLOOR_PAGE;
    /* Pages per millisecond, the fraction carried over. */
    double per_ms = (double) bg->mbps * (1 << 20) / FLOOR_PAGE / 1000.0, owed = 0;
    uint64_t t0 = now_ns(), tick = 0, last_ckpt = t0;
    off_t piece = FLOOR_PAGES_FILE / 256 > (1 << 20) ? FLOOR_PAGES_FILE / 256 : (1 << 20);
    while (!atomic_load(&bg->stop)) {
        owed += per_ms;
        for (; owed >= 1; owed -= 1) {
            rnd ^= rnd << 13, rnd ^= rnd >> 7, rnd ^= rnd << 17;
            uint64_t pg = bg->grow ? bg->pages % npages : rnd % npages;
            if (pwrite(bg->fd, page, sizeof page, (off_t) (pg * FLOOR_PAGE)) !=
                (ssize_t) sizeof page) {
                bg->errors++;
            }
            bg->pages++;
        }
        if (now_ns() - last_ckpt >= 1000000000u) {
            uint64_t a = now_ns();
            for (off_t off = 0; off < (off_t) FLOOR_PAGES_FILE; off += piece) {
                if (sync_file_range(bg->fd, off, piece,
                                    SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                                        SYNC_FILE_RANGE_WAIT_AFTER) != 0) {
                    bg->errors++;
                }
            }
            if (fdatasync(bg->fd)) {
                bg->errors++;
            }
            last_ckpt = now_ns();
            samples_add(&bg->ckpt, last_ckpt - a);
        }
        sleep_until(t0 + ++tick * 1000000u);
        if (now_ns() > t0 + (tick + 100) * 1000000u) {
            tick = (now_ns() - t0) / 1000000u; /* fell behind (a checkpoint): do not burst */
        }
    }
    return NULL;
}

/* A file of 'size' bytes written through (so later writes allocate nothing) and synced. */
static int floor_file(const char *dir, const char *name, uint64_t size, char fill)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        die("open %s: %s", path, strerror(errno));
    }
    static char buf[1 << 20];
    memset(buf, fill, sizeof buf);
    for (uint64_t off = 0; off < size; off += sizeof buf) {
        if (pwrite(fd, buf, sizeof buf, (off_t) off) != (ssize_t) sizeof buf) {
            die("fill %s: %s", path, strerror(errno));
        }
    }
    if (fsync(fd)) {
        die("fsync %s: %s", path, strerror(errno));
    }
    unlink(path); /* the open descriptor keeps it until the run ends */
    return fd;
}

static void print_floor_header(void)
{
    printf("%-14s %6s %7s %7s %7s %7s %7s %5s %5s %9s %8s %9s %8s %6s\n", "case", "MiB/s",
           "syncs", "p50_ms", "p99_ms", "p999_ms", "max_ms", ">5ms", ">10ms", "slow_ms/s",
           "pages/s", "ckpt_avg", "ckpt_max", "errors");
}

static int cmd_sync_floor(int argc, char **argv)
{
    static const struct option opts[] = {
        {"dir", required_argument, NULL, 'd'},
        {"writeback", required_argument, NULL, 'w'},
        {"seconds", required_argument, NULL, 's'},
        {"record", required_argument, NULL, 'r'},
        {"grow", no_argument, NULL, 'g'},
        {NULL, 0, NULL, 0},
    };
    const char *dir = NULL;
    uint64_t mbps = UINT64_MAX, secs = 10, record = 4096;
    bool grow = false;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'd': dir = optarg; break;
        case 'w': mbps = parse_u64("writeback", optarg, 0, 4096); break;
        case 's': secs = parse_u64("seconds", optarg, 1, 3600); break;
        case 'r': record = parse_u64("record", optarg, 1, 1 << 20); break;
        case 'g': grow = true; break;
        default:
            die("usage: mt_bench sync-floor --dir D --writeback MBPS [--seconds S] "
                "[--record BYTES] [--grow]");
        }
    }
    if (!dir || mbps == UINT64_MAX) {
        die("sync-floor: --dir and --writeback are required");
    }
    make_dir(dir);
    int wal = floor_file(dir, "wal.dat", FSYNC_FILE_SIZE, 0);
    floor_bg bg = {.fd = -1, .mbps = mbps, .grow = grow};
    atomic_init(&bg.stop, false);
    pthread_t th;
    if (mbps > 0) {
        bg.fd = floor_file(dir, "pages.dat", grow ? 0 : FLOOR_PAGES_FILE, 'x');
        if (pthread_create(&th, NULL, floor_writer, &bg)) {
            die("pthread_create failed");
        }
    }
    char *rec = malloc(record);
    if (!rec) {
        die("out of memory");
    }
    memset(rec, 'r', record);
    samples s = {0};
    uint64_t errors = 0, off = 0, slow = 0, over5 = 0, over10 = 0;
    uint64_t t0 = now_ns(), end = t0 + secs * 1000000000u;
    while (now_ns() < end) {
        uint64_t a = now_ns();
        if (pwrite(wal, rec, record, (off_t) off) != (ssize_t) record || fdatasync(wal)) {
            fprintf(stderr, "mt_bench sync-floor: %s\n", strerror(errno));
            errors++;
            continue;
        }
        uint64_t d = now_ns() - a;
        samples_add(&s, d);
        if (d > 5000000u) {
            over5++;
            slow += d;
        }
        over10 += d > 10000000u;
        off += record;
        if (off + record > FSYNC_FILE_SIZE) {
            off = 0;
        }
    }
    double took = (double) (now_ns() - t0) / 1e9;
    if (mbps > 0) {
        atomic_store(&bg.stop, true);
        pthread_join(th, NULL);
        close(bg.fd);
    }
    close(wal);
    qsort(s.v, s.n, sizeof *s.v, cmp_u64);
    double ck_sum = 0, ck_max = 0;
    for (size_t i = 0; i < bg.ckpt.n; i++) {
        double ms = (double) bg.ckpt.v[i] / 1e6;
        ck_sum += ms;
        ck_max = ms > ck_max ? ms : ck_max;
    }
    char name[32];
    snprintf(name, sizeof name, "sync-%s%" PRIu64, grow ? "grow" : "wb", mbps);
    printf("%-14s %6" PRIu64 " %7zu %7.3f %7.3f %7.3f %7.2f %5" PRIu64 " %5" PRIu64
           " %9.1f %8.0f %9.1f %8.1f %6" PRIu64 "\n",
           name, mbps, s.n, pct_ms(&s, 50), pct_ms(&s, 99), pct_ms(&s, 99.9),
           s.n ? (double) s.v[s.n - 1] / 1e6 : 0, over5, over10, (double) slow / 1e6 / took,
           (double) bg.pages / took, bg.ckpt.n ? ck_sum / (double) bg.ckpt.n : 0, ck_max,
           errors + bg.errors);
    fflush(stdout);
    free(rec);
    free(s.v);
    free(bg.ckpt.v);
    return errors + bg.errors ? 1 : 0;
}

/* ---- LMDB baseline ---- */

static void mdb_check(int rc, const char *what)
{
    if (rc) {
        die("lmdb: %s: %s", what, mdb_strerror(rc));
    }
}

static int cmd_lmdb(int argc, char **argv)
{
    static const struct option opts[] = {
        {"dir", required_argument, NULL, 'd'},
        {"per-txn", required_argument, NULL, 'k'},
        {"events", required_argument, NULL, 'n'},
        {NULL, 0, NULL, 0},
    };
    const char *dir = NULL;
    uint64_t per_txn = 1, n = 0;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'd': dir = optarg; break;
        case 'k': per_txn = parse_u64("per-txn", optarg, 1, 1000000); break;
        case 'n': n = parse_u64("events", optarg, 1, 1000000000); break;
        default: die("usage: mt_bench lmdb --dir D --per-txn K [--events N]");
        }
    }
    if (!dir) {
        die("lmdb: --dir is required");
    }
    if (n == 0) {
        n = per_txn * 1000;
    }
    make_dir(dir);
    MDB_env *env;
    MDB_dbi dbi;
    MDB_txn *txn;
    mdb_check(mdb_env_create(&env), "env create");
    mdb_check(mdb_env_set_mapsize(env, (size_t) 1 << 30), "set mapsize");
    mdb_check(mdb_env_set_maxdbs(env, 1), "set maxdbs");
    /* Default flags: LMDB makes each commit durable itself (two syncs). */
    mdb_check(mdb_env_open(env, dir, 0, 0600), "env open");
    mdb_check(mdb_txn_begin(env, NULL, 0, &txn), "begin");
    mdb_check(mdb_dbi_open(txn, "log", MDB_CREATE, &dbi), "dbi open");
    mdb_check(mdb_txn_commit(txn), "commit");

    unsigned char val[EVENT_SIZE];
    for (size_t i = 0; i < sizeof val; i++) {
        val[i] = (unsigned char) (i * 131u + 7u);
    }
    samples s = {0};
    uint64_t seq = 0;
    uint64_t t0 = now_ns();
    while (seq < n) {
        uint64_t a = now_ns();
        mdb_check(mdb_txn_begin(env, NULL, 0, &txn), "begin");
        for (uint64_t i = 0; i < per_txn && seq < n; i++) {
            seq++;
            unsigned char key[8];
            for (int b = 0; b < 8; b++) {
                key[b] = (unsigned char) (seq >> (56 - 8 * b));
            }
            memcpy(val, &seq, sizeof seq); /* values differ, as events do */
            MDB_val k = {sizeof key, key}, v = {sizeof val, val};
            mdb_check(mdb_put(txn, dbi, &k, &v, MDB_APPEND), "put");
        }
        mdb_check(mdb_txn_commit(txn), "commit");
        samples_add(&s, now_ns() - a);
    }
    double secs = (double) (now_ns() - t0) / 1e9;
    mdb_env_close(env);
    char name[32];
    snprintf(name, sizeof name, "lmdb-%" PRIu64, per_txn);
    print_row(name, seq, &s, secs, 0);
    free(s.v);
    return 0;
}

/* ---- HTTP client ---- */

typedef struct bench bench;

typedef struct conn {
    bench *b;
    struct evhttp_connection *evcon;
    uint64_t sent_ns;   /* when the in-flight request was made */
    unsigned events;    /* events in the in-flight request */
    bool busy;
} conn;

struct bench {
    struct event_base *base;
    const char *host, *path;
    int port;
    unsigned batch;
    bool get;              /* GET requests without a body (--get) */
    uint64_t max_events;   /* 0: run for 'seconds' */
    uint64_t seconds;
    uint64_t warmup_ns;
    char run_id[40];
    uint64_t next_id;      /* events issued, warm-up included */
    uint64_t issued;       /* events issued in the measured phase */
    uint64_t start_ns;     /* start of the measured phase */
    uint64_t end_ns;       /* stop issuing at this time (seconds mode) */
    uint64_t last_done_ns;
    uint64_t events_ok;    /* events answered 201 in the measured phase */
    uint64_t errors;
    unsigned busy;
    bool measuring, stopping;
    samples lat;
    conn conns[MAX_CONNS];
};

/* Appends one ~EVENT_SIZE-byte structured CloudEvent to 'out'. */
static void add_event(bench *b, struct evbuffer *out)
{
    char ev[EVENT_SIZE + 64];
    uint64_t n = b->next_id++;
    int len = snprintf(ev, sizeof ev,
                       "{\"specversion\":\"1.0\",\"id\":\"%s-%" PRIu64 "\","
                       "\"source\":\"/bench/mt_bench\",\"type\":\"bench.appended\","
                       "\"subject\":\"bench-%03u\",\"datacontenttype\":\"application/json\","
                       "\"data\":{\"n\":%" PRIu64 ",\"pad\":\"",
                       b->run_id, n, (unsigned) (n % SUBJECTS), n);
    if (len < 0 || (size_t) len >= sizeof ev) {
        die("event too long");
    }
    evbuffer_add(out, ev, (size_t) len);
    const char tail[] = "\"}}";
    int pad = EVENT_SIZE - len - (int) (sizeof tail - 1);
    static char xs[EVENT_SIZE];
    if (!xs[0]) {
        memset(xs, 'x', sizeof xs);
    }
    if (pad > 0) {
        evbuffer_add(out, xs, (size_t) pad);
    }
    evbuffer_add(out, tail, sizeof tail - 1);
}

static void on_answer(struct evhttp_request *req, void *arg);

static bool may_send(bench *b, uint64_t now)
{
    if (b->stopping) {
        return false;
    }
    if (!b->measuring) {
        return true;
    }
    if (b->max_events) {
        return b->issued < b->max_events;
    }
    return now < b->end_ns;
}

static void send_next(conn *c)
{
    bench *b = c->b;
    uint64_t now = now_ns();
    if (!b->measuring && now - b->start_ns >= b->warmup_ns) {
        /* Warm-up over: counting starts now. Requests in flight from the
         * warm-up finish uncounted (their send time is before start_ns). */
        b->measuring = true;
        b->start_ns = now;
        b->end_ns = now + b->seconds * 1000000000u;
    }
    if (!may_send(b, now)) {
        if (b->busy == 0) {
            event_base_loopbreak(b->base);
        }
        return;
    }
    struct evhttp_request *req = evhttp_request_new(on_answer, c);
    if (!req) {
        die("evhttp_request_new failed");
    }
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Host", b->host);
    if (!b->get) {
        evhttp_add_header(h, "Content-Type", b->batch == 1 ? "application/cloudevents+json"
                                                           : "application/cloudevents-batch+json");
    }
    struct evbuffer *out = evhttp_request_get_output_buffer(req);
    if (b->get) {
        /* no body */
    } else if (b->batch == 1) {
        add_event(b, out);
    } else {
        evbuffer_add(out, "[", 1);
        for (unsigned i = 0; i < b->batch; i++) {
            if (i) {
                evbuffer_add(out, ",", 1);
            }
            add_event(b, out);
        }
        evbuffer_add(out, "]", 1);
    }
    c->events = b->batch;
    if (b->measuring) {
        b->issued += b->batch;
    }
    c->sent_ns = now_ns();
    c->busy = true;
    b->busy++;
    if (evhttp_make_request(c->evcon, req, b->get ? EVHTTP_REQ_GET : EVHTTP_REQ_POST, b->path)) {
        /* libevent has freed the request. */
        die("evhttp_make_request failed");
    }
}

static void on_answer(struct evhttp_request *req, void *arg)
{
    conn *c = arg;
    bench *b = c->b;
    uint64_t now = now_ns();
    c->busy = false;
    b->busy--;
    int code = req ? evhttp_request_get_response_code(req) : 0;
    bool counted = b->measuring && c->sent_ns >= b->start_ns;
    int want = b->get ? 200 : 201;
    if (code == want) {
        if (counted) {
            samples_add(&b->lat, now - c->sent_ns);
            b->events_ok += c->events;
            b->last_done_ns = now;
        }
    } else {
        b->errors++;
        if (b->errors <= MAX_ERRORS_SHOWN) {
            char body[201] = "";
            if (req) {
                struct evbuffer *in = evhttp_request_get_input_buffer(req);
                ev_ssize_t got = evbuffer_copyout(in, body, sizeof body - 1);
                body[got > 0 ? got : 0] = '\0';
            }
            fprintf(stderr, "mt_bench http: answer %d (want %d)%s%s\n", code, want,
                    code ? ": " : " (connection failed or timed out)", body);
        }
        if (code == 0 && b->errors > 1000) {
            fprintf(stderr, "mt_bench http: too many connection errors, giving up\n");
            b->stopping = true;
        }
    }
    send_next(c);
}

static int cmd_http(int argc, char **argv)
{
    static const struct option opts[] = {
        {"url", required_argument, NULL, 'u'},
        {"conns", required_argument, NULL, 'c'},
        {"batch", required_argument, NULL, 'b'},
        {"seconds", required_argument, NULL, 's'},
        {"events", required_argument, NULL, 'n'},
        {"warmup", required_argument, NULL, 'w'},
        {"name", required_argument, NULL, 'N'},
        {"get", no_argument, NULL, 'g'},
        {NULL, 0, NULL, 0},
    };
    static bench bb; /* large (the connection array): not on the stack */
    bench *b = &bb;
    const char *url = NULL, *name = NULL;
    unsigned nconns = 1;
    uint64_t warmup_ms = 1000;
    b->batch = 1;
    b->seconds = 10;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'u': url = optarg; break;
        case 'c': nconns = (unsigned) parse_u64("conns", optarg, 1, MAX_CONNS); break;
        case 'b': b->batch = (unsigned) parse_u64("batch", optarg, 1, MAX_BATCH); break;
        case 's': b->seconds = parse_u64("seconds", optarg, 1, 86400); break;
        case 'n': b->max_events = parse_u64("events", optarg, 1, 1000000000); break;
        case 'w': warmup_ms = parse_u64("warmup", optarg, 0, 600000); break;
        case 'N': name = optarg; break;
        case 'g': b->get = true; break;
        default:
            die("usage: mt_bench http [--get] --url U [--conns C] [--batch B] "
                "(--seconds S | --events N) [--warmup MS] [--name NAME]");
        }
    }
    if (!url) {
        die("http: --url is required");
    }
    if (b->get && b->batch != 1) {
        die("http: --get sends no events; --batch does not apply");
    }
    struct evhttp_uri *uri = evhttp_uri_parse(url);
    if (!uri || !evhttp_uri_get_host(uri) || !evhttp_uri_get_scheme(uri) ||
        strcmp(evhttp_uri_get_scheme(uri), "http") != 0) {
        die("http: '%s' is not an http:// URL", url);
    }
    b->host = evhttp_uri_get_host(uri);
    b->port = evhttp_uri_get_port(uri) > 0 ? evhttp_uri_get_port(uri) : 80;
    b->path = evhttp_uri_get_path(uri) && *evhttp_uri_get_path(uri) ? evhttp_uri_get_path(uri)
                                                                     : "/events";
    b->warmup_ns = warmup_ms * 1000000u;
    /* Ids unique across runs, so reruns against one store never hit dedupe. */
    struct timespec rt;
    clock_gettime(CLOCK_REALTIME, &rt);
    snprintf(b->run_id, sizeof b->run_id, "b%lx%lx-%x", (unsigned long) rt.tv_sec,
             (unsigned long) rt.tv_nsec, (unsigned) getpid());

    b->base = event_base_new();
    if (!b->base) {
        die("event_base_new failed");
    }
    for (unsigned i = 0; i < nconns; i++) {
        conn *cn = &b->conns[i];
        cn->b = b;
        cn->evcon = evhttp_connection_base_new(b->base, NULL, b->host, (ev_uint16_t) b->port);
        if (!cn->evcon) {
            die("evhttp_connection_base_new failed");
        }
        evhttp_connection_set_timeout(cn->evcon, 30);
    }
    b->start_ns = now_ns();
    b->measuring = b->warmup_ns == 0;
    if (b->measuring) {
        b->end_ns = b->start_ns + b->seconds * 1000000000u;
    }
    for (unsigned i = 0; i < nconns; i++) {
        send_next(&b->conns[i]);
    }
    event_base_dispatch(b->base);

    double secs = b->last_done_ns > b->start_ns ? (double) (b->last_done_ns - b->start_ns) / 1e9
                                                : 0;
    char defname[64];
    if (!name) {
        snprintf(defname, sizeof defname, "http-c%u-b%u", nconns, b->batch);
        name = defname;
    }
    print_row(name, b->events_ok, &b->lat, secs, b->errors);
    for (unsigned i = 0; i < nconns; i++) {
        evhttp_connection_free(b->conns[i].evcon);
    }
    event_base_free(b->base);
    evhttp_uri_free(uri);
    free(b->lat.v);
    return b->errors ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        die("usage: mt_bench fsync|sync-floor|lmdb|http|header|sync-floor-header [OPTIONS] (see the "
            "top of bench/mt_bench.c)");
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "header") == 0) {
        print_header();
        return 0;
    }
    if (strcmp(cmd, "fsync") == 0) {
        return cmd_fsync(argc - 1, argv + 1);
    }
    if (strcmp(cmd, "sync-floor-header") == 0) {
        print_floor_header();
        return 0;
    }
    if (strcmp(cmd, "sync-floor") == 0) {
        return cmd_sync_floor(argc - 1, argv + 1);
    }
    if (strcmp(cmd, "lmdb") == 0) {
        return cmd_lmdb(argc - 1, argv + 1);
    }
    if (strcmp(cmd, "http") == 0) {
        return cmd_http(argc - 1, argv + 1);
    }
    die("unknown command '%s'", cmd);
}
