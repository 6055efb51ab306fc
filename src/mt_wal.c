#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include "mt_diag.h"
#include "mt_mem.h"
#include "mt_util.h"
#include "mt_wal.h"

#define FILE_MAGIC "MTWAL002"
#define SLOT_SIZE 32768u          /* two header slots, written alternately */
#define HDR_SIZE (2 * SLOT_SIZE)
#define SLOT_FIXED 128u           /* fixed fields before the snapshot bytes */
#define SLOT_POS 28u              /* the checkpoint position and its CRC (16 bytes) */
#define SNAP_MAX (SLOT_SIZE - SLOT_FIXED)
#define REC_MAGIC 0x4d54524bu /* "MTRK" */
#define REC_HDR 32
#define MIN_SIZE (1u << 20)

struct mt_wal {
    int fd;            /* -1 when closed */
    char *path;        /* owned */
    uint64_t size;     /* file size in bytes */
    uint32_t seq;      /* header sequence: slot seq % 2 holds the newest header */
    mt_wal_pos head;   /* where the next record goes (appending thread) */
    mt_wal_pos last;   /* the last appended record, off 0 = none (appending thread) */
    pthread_mutex_t mu; /* guards tail, snap and snap_len: a checkpoint moves them */
    mt_wal_pos tail;   /* the last checkpoint's position: replay starts here */
    uint8_t *snap;     /* owned; the last checkpoint's snapshot */
    size_t snap_len;
};

static mt_err io_error(mt_wal *w, const char *what)
{
    int e = errno;
    mt_error("write-ahead file '%s': %s failed: %s", w->path, what, strerror(e));
    return e == ENOSPC ? MT_EFULL : MT_EIO;
}

static mt_err pwrite_all(int fd, const void *p, size_t n, uint64_t off)
{
    const char *c = p;
    while (n > 0) {
        ssize_t k = pwrite(fd, c, n, (off_t) off);
        if (k < 0 && errno == EINTR) {
            continue;
        }
        if (k <= 0) {
            if (k == 0) {
                errno = EIO;
            }
            return MT_EIO;
        }
        c += k;
        n -= (size_t) k;
        off += (uint64_t) k;
    }
    return MT_OK;
}

static mt_err pread_all(int fd, void *p, size_t n, uint64_t off)
{
    char *c = p;
    while (n > 0) {
        ssize_t k = pread(fd, c, n, (off_t) off);
        if (k < 0 && errno == EINTR) {
            continue;
        }
        if (k <= 0) {
            if (k == 0) {
                errno = EIO;
            }
            return MT_EIO;
        }
        c += k;
        n -= (size_t) k;
        off += (uint64_t) k;
    }
    return MT_OK;
}

/*
 * A header slot: magic, sequence, file size, snapshot length, CRC-32 of
 * those and the snapshot; the checkpoint position (generation, offset) and
 * a CRC-32 of it; then the snapshot. Slot seq % 2 is written, so a torn
 * header write leaves the previous header's slot intact.
 */
static mt_err write_header(mt_wal *w, uint32_t seq, mt_wal_pos tail, const uint8_t *snap,
                           size_t snap_len)
{
    size_t n = SLOT_FIXED + snap_len;
    uint8_t *h = mt_xcalloc(1, n);
    memcpy(h, FILE_MAGIC, 8);
    mt_put_be32(h + 8, seq);
    mt_put_be64(h + 12, w->size);
    mt_put_be32(h + 20, (uint32_t) snap_len);
    if (snap_len) {
        memcpy(h + SLOT_FIXED, snap, snap_len);
    }
    uLong c = crc32(0, h, 24);
    mt_put_be32(h + 24, (uint32_t) crc32(c, h + SLOT_FIXED, (uInt) snap_len));
    mt_put_be32(h + SLOT_POS, tail.gen);
    mt_put_be64(h + SLOT_POS + 4, tail.off);
    mt_put_be32(h + SLOT_POS + 12, (uint32_t) crc32(0, h + SLOT_POS, 12));
    mt_err rc = pwrite_all(w->fd, h, n, (uint64_t) (seq % 2) * SLOT_SIZE);
    free(h);
    if (rc) {
        return io_error(w, "header write");
    }
    if (fdatasync(w->fd)) {
        return io_error(w, "fdatasync");
    }
    return MT_OK;
}

static bool all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i]) {
            return false;
        }
    }
    return true;
}

/* Reads slot 'i'; returns its sequence number, or 0 if it is not valid. */
static uint32_t read_slot(mt_wal *w, int i, uint64_t *size, mt_wal_pos *tail, uint8_t **snap,
                          size_t *snap_len)
{
    uint8_t *h = mt_xmalloc(SLOT_SIZE);
    uint32_t seq = 0;
    *snap = NULL;
    *snap_len = 0;
    if (pread_all(w->fd, h, SLOT_SIZE, (uint64_t) i * SLOT_SIZE) == MT_OK &&
        memcmp(h, FILE_MAGIC, 8) == 0 && mt_get_be32(h + 20) <= SNAP_MAX) {
        size_t n = mt_get_be32(h + 20);
        uLong c = crc32(0, h, 24);
        bool ok = mt_get_be32(h + 24) == (uint32_t) crc32(c, h + SLOT_FIXED, (uInt) n) &&
                  mt_get_be32(h + 8) != 0;
        if (ok && all_zero(h + SLOT_POS, 16)) {
            /* The previous format: each checkpoint started a generation at the front. */
            tail->gen = mt_get_be32(h + 8);
            tail->off = HDR_SIZE;
        } else if (ok && mt_get_be32(h + SLOT_POS + 12) == (uint32_t) crc32(0, h + SLOT_POS, 12)) {
            tail->gen = mt_get_be32(h + SLOT_POS);
            tail->off = mt_get_be64(h + SLOT_POS + 4);
        } else {
            ok = false;
        }
        if (ok) {
            seq = mt_get_be32(h + 8);
            *size = mt_get_be64(h + 12);
            *snap = mt_xmalloc(n ? n : 1);
            memcpy(*snap, h + SLOT_FIXED, n);
            *snap_len = n;
        }
    }
    free(h);
    return seq;
}

static mt_err create_file(mt_wal *w)
{
    char *tmp = mt_xasprintf("%s.new", w->path);
    int fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    mt_err rc = MT_OK;
    if (fd < 0) {
        rc = io_error(w, "create");
        free(tmp);
        return rc;
    }
    w->fd = fd;
    /* Real zeroes, not a sparse file: later fdatasyncs then write data blocks only. */
    size_t chunk = 1u << 20;
    char *zero = mt_xcalloc(1, chunk);
    for (uint64_t off = 0; off < w->size && rc == MT_OK; off += chunk) {
        size_t n = (size_t) (w->size - off < chunk ? w->size - off : chunk);
        if (pwrite_all(fd, zero, n, off)) {
            rc = io_error(w, "pre-allocation");
        }
    }
    free(zero);
    if (rc == MT_OK) {
        w->seq = 1;
        w->tail = (mt_wal_pos){1, HDR_SIZE};
        rc = write_header(w, w->seq, w->tail, NULL, 0);
    }
    if (rc == MT_OK && fsync(fd)) {
        rc = io_error(w, "fsync");
    }
    if (rc == MT_OK && rename(tmp, w->path)) {
        rc = io_error(w, "rename");
    }
    if (rc == MT_OK) {
        /* Make the new name itself durable. */
        char *dir = mt_xstrdup(w->path);
        mt_sync_dir(dirname(dir));
        free(dir);
    } else {
        unlink(tmp);
    }
    free(tmp);
    return rc;
}

mt_err mt_wal_open(const char *path, uint64_t size, mt_wal **out)
{
    *out = NULL;
    if (size < MIN_SIZE) {
        return MT_EINVAL;
    }
    mt_wal *w = mt_xcalloc(1, sizeof *w);
    w->fd = -1;
    w->path = mt_xstrdup(path);
    w->size = size & ~(uint64_t) 7;
    pthread_mutex_init(&w->mu, NULL);
    mt_err rc = MT_OK;
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
        rc = create_file(w);
    } else if (fd < 0) {
        rc = io_error(w, "open");
    } else {
        w->fd = fd;
        /* The newer of the two valid slots is the last checkpoint. */
        uint64_t sizes[2] = {0, 0};
        mt_wal_pos tails[2] = {{0, 0}, {0, 0}};
        uint8_t *snap[2];
        size_t snap_len[2];
        uint32_t seq[2];
        for (int i = 0; i < 2; i++) {
            seq[i] = read_slot(w, i, &sizes[i], &tails[i], &snap[i], &snap_len[i]);
        }
        int cur = seq[1] > seq[0] ? 1 : 0;
        free(snap[1 - cur]);
        if (seq[cur] == 0) {
            free(snap[cur]);
            mt_error("write-ahead file '%s': damaged header (not a moontide write-ahead file?)",
                     path);
            rc = MT_EIO;
        } else {
            w->seq = seq[cur];
            w->size = sizes[cur];
            w->tail = tails[cur];
            w->snap = snap[cur];
            w->snap_len = snap_len[cur];
            struct stat st;
            if (fstat(fd, &st) || (uint64_t) st.st_size < w->size) {
                mt_error("write-ahead file '%s': shorter than its header says", path);
                rc = MT_EIO;
            } else if (w->size < MIN_SIZE || w->size % 8 || w->tail.gen == 0 ||
                       w->tail.off < HDR_SIZE || w->tail.off > w->size || w->tail.off % 8) {
                mt_error("write-ahead file '%s': damaged header (impossible size or position)",
                         path);
                rc = MT_EIO;
            }
        }
    }
    if (rc) {
        mt_wal_close(w);
        return rc;
    }
    w->head = w->tail;
    *out = w;
    return MT_OK;
}

void mt_wal_close(mt_wal *w)
{
    if (!w) {
        return;
    }
    if (w->fd >= 0) {
        close(w->fd);
    }
    free(w->snap);
    free(w->path);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

static uint32_t record_crc(const uint8_t *hdr, const void *payload, size_t len)
{
    uLong c = crc32(0, hdr, 24);
    /* crc32(c, NULL, 0) would return zlib's initial value, not c. */
    return len ? (uint32_t) crc32(c, payload, (uInt) len) : (uint32_t) c;
}

static uint64_t padded(size_t len)
{
    return (REC_HDR + (uint64_t) len + 7) & ~(uint64_t) 7;
}

/*
 * Reads the record at 'pos' if it is a valid one of lap pos.gen that ends
 * before 'end'. Returns MT_OK and sets *len (the payload in *buf), or
 * MT_ENOTFOUND, or MT_EIO.
 */
static mt_err read_record(mt_wal *w, mt_wal_pos pos, uint64_t end, uint8_t **buf, size_t *cap,
                          uint64_t *group, uint32_t *len)
{
    uint8_t h[REC_HDR];
    if (pos.off + REC_HDR > end) {
        return MT_ENOTFOUND;
    }
    if (pread_all(w->fd, h, sizeof h, pos.off)) {
        return io_error(w, "read");
    }
    *len = mt_get_be32(h + 20);
    if (mt_get_be32(h) != REC_MAGIC || mt_get_be32(h + 4) != pos.gen || pos.off + padded(*len) > end) {
        return MT_ENOTFOUND;
    }
    if (*len > *cap) {
        *cap = *len;
        *buf = mt_xrealloc(*buf, *cap);
    }
    if (*len && pread_all(w->fd, *buf, *len, pos.off + REC_HDR)) {
        return io_error(w, "read");
    }
    if (record_crc(h, *buf, *len) != mt_get_be32(h + 24)) {
        return MT_ENOTFOUND; /* a torn tail: the group was never acknowledged */
    }
    *group = mt_get_be64(h + 8);
    return MT_OK;
}

mt_err mt_wal_replay(mt_wal *w,
                     mt_err (*cb)(uint64_t group_id, const void *payload, size_t len, void *arg),
                     void *arg)
{
    mt_wal_pos pos = w->tail;
    uint64_t end = w->size;
    uint8_t *buf = NULL;
    size_t cap = 0;
    mt_err rc = MT_OK;
    for (;;) {
        uint64_t group;
        uint32_t len;
        rc = read_record(w, pos, end, &buf, &cap, &group, &len);
        if (rc == MT_ENOTFOUND && pos.gen == w->tail.gen) {
            /*
             * The end of the checkpoint's lap. The writer went on at the
             * front with the next generation only if a record did not fit
             * here; that lap may not reach the checkpoint's position.
             */
            mt_wal_pos front = {pos.gen + 1, HDR_SIZE};
            end = w->tail.off;
            rc = read_record(w, front, end, &buf, &cap, &group, &len);
            if (rc == MT_OK) {
                pos = front;
            }
        }
        if (rc) {
            if (rc == MT_ENOTFOUND) {
                rc = MT_OK; /* the end of the records */
            }
            break;
        }
        rc = cb(group, buf, len, arg);
        if (rc) {
            break;
        }
        pos.off += padded(len);
    }
    free(buf);
    w->head = pos;
    w->last = (mt_wal_pos){0, 0};
    return rc;
}

mt_err mt_wal_append(mt_wal *w, uint64_t group_id, const void *payload, size_t len)
{
    if (len > UINT32_MAX || padded(len) > w->size - HDR_SIZE) {
        return MT_ETOOBIG;
    }
    uint64_t total = padded(len);
    pthread_mutex_lock(&w->mu);
    mt_wal_pos tail = w->tail;
    pthread_mutex_unlock(&w->mu);
    /*
     * The ring: on the checkpoint's lap, the record goes at the head or, if
     * it does not fit before the end, at the front of the next lap; on the
     * next lap it must end before the checkpoint's position, whose records
     * a replay still needs.
     */
    mt_wal_pos at = w->head;
    if (at.gen == tail.gen) {
        if (at.off + total > w->size) {
            at = (mt_wal_pos){tail.gen + 1, HDR_SIZE};
        }
    } else {
        mt_assert(at.gen == tail.gen + 1);
    }
    if (at.gen != tail.gen && at.off + total > tail.off) {
        return MT_EFULL;
    }
    uint8_t *rec = mt_trymalloc((size_t) total);
    if (!rec) {
        return MT_ENOMEM;
    }
    memset(rec, 0, REC_HDR);
    mt_put_be32(rec, REC_MAGIC);
    mt_put_be32(rec + 4, at.gen);
    mt_put_be64(rec + 8, group_id);
    mt_put_be32(rec + 20, (uint32_t) len);
    mt_put_be32(rec + 24, record_crc(rec, payload, len));
    memcpy(rec + REC_HDR, payload, len);
    memset(rec + REC_HDR + len, 0, (size_t) (total - REC_HDR - len));
    mt_err rc = pwrite_all(w->fd, rec, (size_t) total, at.off);
    free(rec);
    if (rc) {
        return io_error(w, "write");
    }
    w->last = at;
    w->head = (mt_wal_pos){at.gen, at.off + total};
    return MT_OK;
}

mt_err mt_wal_sync(mt_wal *w)
{
    if (fdatasync(w->fd)) {
        return io_error(w, "fdatasync");
    }
    return MT_OK;
}

mt_err mt_wal_undo_last(mt_wal *w)
{
    pthread_mutex_lock(&w->mu);
    mt_wal_pos tail = w->tail;
    pthread_mutex_unlock(&w->mu);
    if (w->last.gen + 1 == tail.gen || (w->last.gen == tail.gen && w->last.off < tail.off)) {
        /* A checkpoint covers it: that record's group is in the store's state. */
        w->last = (mt_wal_pos){0, 0};
    }
    if (!w->last.off) {
        return MT_OK;
    }
    uint8_t zero[REC_HDR] = {0};
    if (pwrite_all(w->fd, zero, sizeof zero, w->last.off)) {
        return io_error(w, "write");
    }
    w->head = w->last;
    w->last = (mt_wal_pos){0, 0};
    return mt_wal_sync(w);
}

mt_wal_pos mt_wal_tell(const mt_wal *w)
{
    return w->head;
}

mt_err mt_wal_skip(mt_wal *w)
{
    pthread_mutex_lock(&w->mu);
    mt_wal_pos tail = w->tail;
    pthread_mutex_unlock(&w->mu);
    if (w->head.gen != tail.gen) {
        return MT_EFULL;
    }
    w->head = (mt_wal_pos){tail.gen + 1, HDR_SIZE};
    w->last = (mt_wal_pos){0, 0};
    return MT_OK;
}

mt_err mt_wal_checkpoint(mt_wal *w, mt_wal_pos pos, const void *snap, size_t len)
{
    if (len > SNAP_MAX) {
        return MT_ETOOBIG;
    }
    mt_assert(pos.off >= HDR_SIZE && pos.off <= w->size);
    /*
     * The header is written outside the lock: appends go on meanwhile, and
     * they may not use the space before 'pos' until the header saying that
     * replay starts there is durable.
     */
    mt_err rc = write_header(w, w->seq + 1, pos, snap, len);
    if (rc) {
        return rc;
    }
    uint8_t *copy = mt_xmalloc(len ? len : 1);
    memcpy(copy, snap, len);
    pthread_mutex_lock(&w->mu);
    mt_assert(pos.gen == w->tail.gen ? pos.off >= w->tail.off : pos.gen == w->tail.gen + 1);
    w->seq++;
    w->tail = pos;
    free(w->snap);
    w->snap = copy;
    w->snap_len = len;
    pthread_mutex_unlock(&w->mu);
    return MT_OK;
}

void mt_wal_snapshot(const mt_wal *w, const void **snap, size_t *len)
{
    *snap = w->snap;
    *len = w->snap_len;
}

mt_wal_pos mt_wal_checkpoint_pos(mt_wal *w)
{
    pthread_mutex_lock(&w->mu);
    mt_wal_pos tail = w->tail;
    pthread_mutex_unlock(&w->mu);
    return tail;
}

uint64_t mt_wal_used(mt_wal *w)
{
    mt_wal_pos tail = mt_wal_checkpoint_pos(w);
    if (w->head.gen == tail.gen) {
        return w->head.off - tail.off;
    }
    return (w->size - tail.off) + (w->head.off - HDR_SIZE);
}

uint64_t mt_wal_capacity(const mt_wal *w)
{
    return w->size - HDR_SIZE;
}
