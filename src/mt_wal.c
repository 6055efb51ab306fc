#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
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
#define SNAP_MAX (SLOT_SIZE - SLOT_FIXED)
#define REC_MAGIC 0x4d54524bu /* "MTRK" */
#define REC_HDR 32
#define MIN_SIZE (1u << 20)

struct mt_wal {
    int fd;            /* -1 when closed */
    char *path;        /* owned */
    uint64_t size;     /* file size in bytes */
    uint32_t gen;      /* current generation */
    uint64_t pos;      /* next record offset, >= HDR_SIZE */
    uint64_t last_pos; /* offset of the last appended record, 0 = none */
    uint8_t *snap;     /* owned; the checkpoint snapshot of this generation */
    size_t snap_len;
};

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t) (v >> 24);
    p[1] = (uint8_t) (v >> 16);
    p[2] = (uint8_t) (v >> 8);
    p[3] = (uint8_t) v;
}

static uint32_t get32(const uint8_t *p)
{
    return ((uint32_t) p[0] << 24) | ((uint32_t) p[1] << 16) | ((uint32_t) p[2] << 8) | p[3];
}

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
 * A header slot: magic, generation, file size, snapshot length, CRC-32 of
 * those and the snapshot, then the snapshot. Slot gen % 2 is written, so a
 * torn header write leaves the previous generation's slot intact.
 */
static mt_err write_header(mt_wal *w)
{
    size_t n = SLOT_FIXED + w->snap_len;
    uint8_t *h = mt_xcalloc(1, n);
    memcpy(h, FILE_MAGIC, 8);
    put32(h + 8, w->gen);
    mt_put_be64(h + 12, w->size);
    put32(h + 20, (uint32_t) w->snap_len);
    if (w->snap_len) {
        memcpy(h + SLOT_FIXED, w->snap, w->snap_len);
    }
    uLong c = crc32(0, h, 24);
    put32(h + 24, (uint32_t) crc32(c, h + SLOT_FIXED, (uInt) w->snap_len));
    mt_err rc = pwrite_all(w->fd, h, n, (uint64_t) (w->gen % 2) * SLOT_SIZE);
    free(h);
    if (rc) {
        return io_error(w, "header write");
    }
    if (fdatasync(w->fd)) {
        return io_error(w, "fdatasync");
    }
    return MT_OK;
}

/* Reads slot 'i'; returns its generation, or 0 if it is not valid. */
static uint32_t read_slot(mt_wal *w, int i, uint64_t *size, uint8_t **snap, size_t *snap_len)
{
    uint8_t *h = mt_xmalloc(SLOT_SIZE);
    uint32_t gen = 0;
    *snap = NULL;
    *snap_len = 0;
    if (pread_all(w->fd, h, SLOT_SIZE, (uint64_t) i * SLOT_SIZE) == MT_OK &&
        memcmp(h, FILE_MAGIC, 8) == 0 && get32(h + 20) <= SNAP_MAX) {
        size_t n = get32(h + 20);
        uLong c = crc32(0, h, 24);
        if (get32(h + 24) == (uint32_t) crc32(c, h + SLOT_FIXED, (uInt) n) && get32(h + 8) != 0) {
            gen = get32(h + 8);
            *size = mt_get_be64(h + 12);
            *snap = mt_xmalloc(n ? n : 1);
            memcpy(*snap, h + SLOT_FIXED, n);
            *snap_len = n;
        }
    }
    free(h);
    return gen;
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
        w->gen = 1;
        rc = write_header(w);
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
        int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
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
    w->pos = HDR_SIZE;
    mt_err rc = MT_OK;
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
        rc = create_file(w);
    } else if (fd < 0) {
        rc = io_error(w, "open");
    } else {
        w->fd = fd;
        /* The newer of the two valid slots is the current generation. */
        uint64_t sizes[2] = {0, 0};
        uint8_t *snap[2];
        size_t snap_len[2];
        uint32_t gen[2];
        for (int i = 0; i < 2; i++) {
            gen[i] = read_slot(w, i, &sizes[i], &snap[i], &snap_len[i]);
        }
        int cur = gen[1] > gen[0] ? 1 : 0;
        free(snap[1 - cur]);
        if (gen[cur] == 0) {
            free(snap[cur]);
            mt_error("write-ahead file '%s': damaged header (not a moontide write-ahead file?)",
                     path);
            rc = MT_EIO;
        } else {
            w->gen = gen[cur];
            w->size = sizes[cur];
            w->snap = snap[cur];
            w->snap_len = snap_len[cur];
            struct stat st;
            if (fstat(fd, &st) || (uint64_t) st.st_size < w->size) {
                mt_error("write-ahead file '%s': shorter than its header says", path);
                rc = MT_EIO;
            }
        }
    }
    if (rc) {
        mt_wal_close(w);
        return rc;
    }
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

mt_err mt_wal_replay(mt_wal *w,
                     mt_err (*cb)(uint64_t group_id, const void *payload, size_t len, void *arg),
                     void *arg)
{
    uint64_t pos = HDR_SIZE;
    uint8_t *buf = NULL;
    size_t cap = 0;
    mt_err rc = MT_OK;
    while (pos + REC_HDR <= w->size) {
        uint8_t h[REC_HDR];
        if (pread_all(w->fd, h, sizeof h, pos)) {
            rc = io_error(w, "read");
            break;
        }
        uint32_t len = get32(h + 20);
        if (get32(h) != REC_MAGIC || get32(h + 4) != w->gen || pos + padded(len) > w->size) {
            break;
        }
        if (len > cap) {
            cap = len;
            buf = mt_xrealloc(buf, cap);
        }
        if (len && pread_all(w->fd, buf, len, pos + REC_HDR)) {
            rc = io_error(w, "read");
            break;
        }
        if (record_crc(h, buf, len) != get32(h + 24)) {
            break; /* a torn tail: the group was never acknowledged */
        }
        rc = cb(mt_get_be64(h + 8), buf, len, arg);
        if (rc) {
            break;
        }
        pos += padded(len);
    }
    free(buf);
    w->pos = pos;
    w->last_pos = 0;
    return rc;
}

mt_err mt_wal_append(mt_wal *w, uint64_t group_id, const void *payload, size_t len)
{
    if (len > UINT32_MAX || padded(len) > w->size - HDR_SIZE) {
        return MT_ETOOBIG;
    }
    if (w->pos + padded(len) > w->size) {
        return MT_EFULL;
    }
    uint64_t total = padded(len);
    uint8_t *rec = mt_trymalloc((size_t) total);
    if (!rec) {
        return MT_ENOMEM;
    }
    memset(rec, 0, REC_HDR);
    put32(rec, REC_MAGIC);
    put32(rec + 4, w->gen);
    mt_put_be64(rec + 8, group_id);
    put32(rec + 20, (uint32_t) len);
    put32(rec + 24, record_crc(rec, payload, len));
    memcpy(rec + REC_HDR, payload, len);
    memset(rec + REC_HDR + len, 0, (size_t) (total - REC_HDR - len));
    mt_err rc = pwrite_all(w->fd, rec, (size_t) total, w->pos);
    free(rec);
    if (rc) {
        return io_error(w, "write");
    }
    w->last_pos = w->pos;
    w->pos += total;
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
    if (!w->last_pos) {
        return MT_OK;
    }
    uint8_t zero[REC_HDR] = {0};
    if (pwrite_all(w->fd, zero, sizeof zero, w->last_pos)) {
        return io_error(w, "write");
    }
    w->pos = w->last_pos;
    w->last_pos = 0;
    return mt_wal_sync(w);
}

mt_err mt_wal_reset(mt_wal *w, const void *snap, size_t len)
{
    if (len > SNAP_MAX) {
        return MT_ETOOBIG;
    }
    uint8_t *copy = mt_xmalloc(len ? len : 1);
    memcpy(copy, snap, len);
    free(w->snap);
    w->snap = copy;
    w->snap_len = len;
    w->gen++;
    mt_err rc = write_header(w);
    if (rc) {
        return rc;
    }
    w->pos = HDR_SIZE;
    w->last_pos = 0;
    return MT_OK;
}

void mt_wal_snapshot(const mt_wal *w, const void **snap, size_t *len)
{
    *snap = w->snap;
    *len = w->snap_len;
}

uint64_t mt_wal_used(const mt_wal *w)
{
    return w->pos - HDR_SIZE;
}

uint64_t mt_wal_capacity(const mt_wal *w)
{
    return w->size - HDR_SIZE;
}
