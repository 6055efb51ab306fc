/*
 * test_mt_wal.c - the write-ahead file: pre-allocation, records replayed in
 * order with exact payloads, torn tails, the ring (checkpoint positions,
 * the wrap to the front, space reused only once a checkpoint is recorded,
 * skipping the rest of a lap), full and too-big appends, undo of the last
 * record, checkpoint snapshots, damaged header slots and headers of the
 * previous format. Damage is made
 * with pwrite on the closed file, as a crash or a bad disk would leave it.
 */
#include "mt_test.h"
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include "mt_wal.h"

#define MIB (1ULL << 20)
#define SLOT_SIZE 32768 /* two header slots, from mt_wal.h */
#define HDR_SIZE (2 * SLOT_SIZE)
#define SNAP_MAX (SLOT_SIZE - 128)
#define REC_HDR 32      /* record header before the payload */

/* DIR/NAME (caller frees). */
static char *path_in(void **state, const char *name)
{
    const char *dir = *state;
    char *p = malloc(strlen(dir) + strlen(name) + 2);
    assert_non_null(p);
    sprintf(p, "%s/%s", dir, name);
    return p;
}

/* The bytes a record of 'len' payload bytes takes in the file. */
static uint64_t rec_size(size_t len)
{
    return (REC_HDR + len + 7) & ~(uint64_t) 7;
}

static mt_wal *open_ok(const char *path, uint64_t size)
{
    mt_wal *w = NULL;
    assert_int_equal(mt_wal_open(path, size, &w), MT_OK);
    assert_non_null(w);
    return w;
}

/* Overwrites bytes of a closed file. */
static void poke(const char *path, uint64_t off, const void *bytes, size_t n)
{
    int fd = open(path, O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, bytes, n, (off_t) off), (ssize_t) n);
    close(fd);
}

static void poke_byte(const char *path, uint64_t off, uint8_t b)
{
    poke(path, off, &b, 1);
}

/* Payload i: 'len' bytes derived from i, so a mix-up is visible. */
static void fill_payload(uint8_t *p, size_t len, int i)
{
    for (size_t k = 0; k < len; k++) {
        p[k] = (uint8_t) (i * 31 + k * 7 + 1);
    }
}

/* ---- what replay saw ---- */

#define MAX_SEEN 64

typedef struct seen {
    int count;
    uint64_t group[MAX_SEEN];
    uint8_t *payload[MAX_SEEN];
    size_t len[MAX_SEEN];
    int stop_at;        /* 1-based call that returns stop_rc; 0 = never */
    mt_err stop_rc;
} seen;

static mt_err collect(uint64_t group_id, const void *payload, size_t len, void *arg)
{
    seen *s = arg;
    assert_true(s->count < MAX_SEEN);
    s->group[s->count] = group_id;
    s->len[s->count] = len;
    s->payload[s->count] = malloc(len ? len : 1);
    assert_non_null(s->payload[s->count]);
    if (len) {
        memcpy(s->payload[s->count], payload, len);
    }
    s->count++;
    if (s->stop_at && s->count == s->stop_at) {
        return s->stop_rc;
    }
    return MT_OK;
}

static void seen_free(seen *s)
{
    for (int i = 0; i < s->count; i++) {
        free(s->payload[i]);
    }
    memset(s, 0, sizeof *s);
}

/* Replays 'w' and returns how many records it saw (caller frees *s). */
static int replay(mt_wal *w, seen *s)
{
    memset(s, 0, sizeof *s);
    assert_int_equal(mt_wal_replay(w, collect, s), MT_OK);
    return s->count;
}

/*
 * Reopens 'path', replays it and checks the records are exactly 'groups'/'lens'
 * (payload i from payload_ids[i]). Cleans up before it fails.
 */
static void expect_on_disk(const char *path, const uint64_t *groups, const size_t *lens,
                           const int *payload_ids, int n)
{
    mt_wal *w = open_ok(path, MIB);
    seen s;
    int got = replay(w, &s);
    mt_wal_close(w);
    int bad = got != n ? -1 : 0;
    for (int i = 0; i < n && bad == 0; i++) {
        uint8_t *want = malloc(lens[i] ? lens[i] : 1);
        assert_non_null(want);
        fill_payload(want, lens[i], payload_ids[i]);
        if (s.group[i] != groups[i] || s.len[i] != lens[i] ||
            (lens[i] && memcmp(s.payload[i], want, lens[i]) != 0)) {
            bad = i + 1;
        }
        free(want);
    }
    seen_free(&s);
    if (bad < 0) {
        fail_msg("replayed %d records, want %d", got, n);
    } else if (bad > 0) {
        fail_msg("record %d differs (group, length or payload)", bad - 1);
    }
}

static void append_payload(mt_wal *w, uint64_t group, size_t len, int id)
{
    uint8_t *p = malloc(len ? len : 1);
    assert_non_null(p);
    fill_payload(p, len, id);
    assert_int_equal(mt_wal_append(w, group, p, len), MT_OK);
    free(p);
}

/* ---- open ---- */

static void test_wal_open_creates_a_preallocated_file_of_the_given_size(void **state)
{
    static const uint64_t sizes[] = {MIB, 2 * MIB + 8, 3 * MIB};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "wal%zu", i);
        char *path = path_in(state, name);
        mt_wal *w = open_ok(path, sizes[i]);
        struct stat st;
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_size, sizes[i]);
        /* Real zeroes, not holes: later syncs must not allocate blocks. */
        assert_true((uint64_t) st.st_blocks * 512 >= sizes[i]);
        assert_int_equal(mt_wal_used(w), 0);
        assert_int_equal(mt_wal_capacity(w), sizes[i] - HDR_SIZE);
        mt_wal_close(w);

        /* Header 1 is in slot 1; the temporary file is gone. */
        FILE *f = fopen(path, "rb");
        assert_non_null(f);
        char magic[8];
        assert_int_equal(fseek(f, SLOT_SIZE, SEEK_SET), 0);
        assert_int_equal(fread(magic, 1, 8, f), 8);
        fclose(f);
        assert_memory_equal(magic, "MTWAL002", 8);
        char *tmp = malloc(strlen(path) + 8);
        assert_non_null(tmp);
        sprintf(tmp, "%s.new", path);
        assert_int_not_equal(access(tmp, F_OK), 0);
        free(tmp);
        free(path);
    }
    mt_wal_close(NULL);
}

static void test_wal_existing_file_keeps_its_own_size(void **state)
{
    char *path = path_in(state, "wal");
    mt_wal *w = open_ok(path, 2 * MIB);
    append_payload(w, 1, 100, 1);
    assert_int_equal(mt_wal_sync(w), MT_OK);
    mt_wal_close(w);

    w = open_ok(path, MIB);
    assert_int_equal(mt_wal_capacity(w), 2 * MIB - HDR_SIZE);
    seen s;
    assert_int_equal(replay(w, &s), 1);
    seen_free(&s);
    mt_wal_close(w);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, 2 * MIB);
    free(path);
}

static void test_wal_size_below_one_mib_is_einval(void **state)
{
    char *path = path_in(state, "wal");
    static const uint64_t sizes[] = {0, 4096, MIB - 1};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        mt_wal *w = (mt_wal *) &w;
        assert_int_equal(mt_wal_open(path, sizes[i], &w), MT_EINVAL);
        assert_null(w);
        assert_int_not_equal(access(path, F_OK), 0);
    }
    free(path);
}

static void test_wal_unopenable_path_is_eio(void **state)
{
    /* A directory in the way, and a parent that does not exist. */
    char *missing = path_in(state, "no/such/dir/wal");
    mt_wal *w = (mt_wal *) &w;
    assert_int_equal(mt_wal_open(*state, MIB, &w), MT_EIO);
    assert_null(w);
    w = (mt_wal *) &w;
    assert_int_equal(mt_wal_open(missing, MIB, &w), MT_EIO);
    assert_null(w);
    free(missing);
}

static void test_wal_damaged_header_is_eio(void **state)
{
    typedef struct damage {
        const char *what;
        uint64_t off;   /* byte to flip, or UINT64_MAX to truncate to 'len' */
        off_t len;
    } damage;
    /* A fresh file has header 1, in slot 1; slot 0 is zeroes. */
    static const damage cases[] = {
        {"magic", SLOT_SIZE + 0, 0},
        {"magic, last byte", SLOT_SIZE + 7, 0},
        {"sequence (CRC no longer matches)", SLOT_SIZE + 11, 0},
        {"size (CRC no longer matches)", SLOT_SIZE + 19, 0},
        {"snapshot length", SLOT_SIZE + 23, 0},
        {"CRC", SLOT_SIZE + 26, 0},
        {"empty file", UINT64_MAX, 0},
        {"cut inside slot 0", UINT64_MAX, 30},
        {"cut inside slot 1", UINT64_MAX, SLOT_SIZE + 100},
        {"shorter than the header says", UINT64_MAX, MIB / 2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *path = path_in(state, "wal");
        unlink(path);
        mt_wal *w = open_ok(path, MIB);
        append_payload(w, 1, 10, 1);
        mt_wal_close(w);
        if (cases[i].off == UINT64_MAX) {
            assert_int_equal(truncate(path, cases[i].len), 0);
        } else {
            int fd = open(path, O_RDWR);
            assert_true(fd >= 0);
            uint8_t b;
            assert_int_equal(pread(fd, &b, 1, (off_t) cases[i].off), 1);
            b ^= 0x40;
            assert_int_equal(pwrite(fd, &b, 1, (off_t) cases[i].off), 1);
            close(fd);
        }
        w = (mt_wal *) &w;
        mt_err rc = mt_wal_open(path, MIB, &w);
        if (rc != MT_EIO) {
            print_error("damaged %s: got %s\n", cases[i].what, mt_err_str(rc));
            fail();
        }
        assert_null(w);
        free(path);
    }

    /* A file that is not a write-ahead file at all. */
    char *other = mt_test_write_file(*state, "notes.txt", "hello, I am not a wal\n");
    mt_wal *w = (mt_wal *) &w;
    assert_int_equal(mt_wal_open(other, MIB, &w), MT_EIO);
    assert_null(w);
    free(other);
}

static void test_wal_damaged_newer_slot_falls_back_to_the_previous_checkpoint(void **state)
{
    char *path = path_in(state, "wal");
    mt_wal *w = open_ok(path, MIB);
    append_payload(w, 1, 10, 1);
    append_payload(w, 2, 20, 2);
    assert_int_equal(mt_wal_sync(w), MT_OK);
    /* Header 2 goes to slot 0; header 1's slot stays as it was. */
    assert_int_equal(mt_wal_checkpoint(w, mt_wal_tell(w), "snap-2", 6), MT_OK);
    mt_wal_close(w);

    /* As if the header write of checkpoint 2 had been torn. */
    poke_byte(path, 2, 0xee);
    w = open_ok(path, MIB);
    const void *snap;
    size_t len;
    mt_wal_snapshot(w, &snap, &len);
    assert_int_equal(len, 0);
    seen s;
    assert_int_equal(replay(w, &s), 2);
    assert_int_equal(s.group[0], 1);
    assert_int_equal(s.group[1], 2);
    seen_free(&s);
    mt_wal_close(w);

    /* Both slots damaged: nothing to trust. */
    poke_byte(path, SLOT_SIZE + 2, 0xee);
    w = (mt_wal *) &w;
    assert_int_equal(mt_wal_open(path, MIB, &w), MT_EIO);
    assert_null(w);
    free(path);
}

/* ---- checkpoint snapshots ---- */

static void test_wal_checkpoint_saves_the_snapshot(void **state)
{
    char *path = path_in(state, "wal");
    mt_wal *w = open_ok(path, MIB);
    const void *snap = (const void *) &snap;
    size_t len = 99;
    mt_wal_snapshot(w, &snap, &len);
    assert_int_equal(len, 0);

    /* The snapshot is copied: the caller's buffer may change afterwards. */
    char buf[64];
    strcpy(buf, "meta pages v1");
    assert_int_equal(mt_wal_checkpoint(w, mt_wal_tell(w), buf, strlen(buf)), MT_OK);
    strcpy(buf, "XXXXXXXXXXXXX");
    mt_wal_snapshot(w, &snap, &len);
    assert_int_equal(len, 13);
    assert_memory_equal(snap, "meta pages v1", 13);
    mt_wal_close(w);

    w = open_ok(path, MIB);
    mt_wal_snapshot(w, &snap, &len);
    assert_int_equal(len, 13);
    assert_memory_equal(snap, "meta pages v1", 13);

    /* The largest snapshot fits; one byte more is refused and changes nothing. */
    uint8_t *big = malloc(SNAP_MAX + 1);
    assert_non_null(big);
    fill_payload(big, SNAP_MAX + 1, 9);
    assert_int_equal(mt_wal_checkpoint(w, mt_wal_tell(w), big, SNAP_MAX + 1), MT_ETOOBIG);
    mt_wal_snapshot(w, &snap, &len);
    assert_int_equal(len, 13);
    append_payload(w, 5, 10, 5);
    assert_int_equal(mt_wal_checkpoint(w, mt_wal_tell(w), big, SNAP_MAX), MT_OK);
    mt_wal_close(w);

    w = open_ok(path, MIB);
    mt_wal_snapshot(w, &snap, &len);
    assert_int_equal(len, SNAP_MAX);
    assert_memory_equal(snap, big, SNAP_MAX);
    seen s;
    assert_int_equal(replay(w, &s), 0);

    /* An empty snapshot is a valid one. */
    assert_int_equal(mt_wal_checkpoint(w, mt_wal_tell(w), "", 0), MT_OK);
    mt_wal_close(w);
    w = open_ok(path, MIB);
    mt_wal_snapshot(w, &snap, &len);
    assert_int_equal(len, 0);
    mt_wal_close(w);
    free(big);
    free(path);
}

/* ---- append and replay ---- */

static void test_wal_replays_records_in_order_with_exact_payloads(void **state)
{
    char *path = path_in(state, "wal");
    static const size_t lens[] = {1, 7, 8, 9, 31, 32, 33, 100, 4096, 65537, 3};
    static const uint64_t groups[] = {1, 2, 3, 10, 11, 12, 1000, UINT64_MAX - 1, 5, 6, 7};
    static const int ids[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    const int n = (int) (sizeof lens / sizeof lens[0]);
    mt_wal *w = open_ok(path, MIB);
    uint64_t used = 0;
    for (int i = 0; i < n; i++) {
        append_payload(w, groups[i], lens[i], ids[i]);
        used += rec_size(lens[i]);
        assert_int_equal(mt_wal_used(w), used);
    }
    assert_int_equal(mt_wal_sync(w), MT_OK);
    mt_wal_close(w);

    expect_on_disk(path, groups, lens, ids, n);

    /* Replay leaves the writer after the last record: new records follow. */
    w = open_ok(path, MIB);
    seen s;
    assert_int_equal(replay(w, &s), n);
    seen_free(&s);
    assert_int_equal(mt_wal_used(w), used);
    append_payload(w, 99, 50, 50);
    assert_int_equal(mt_wal_sync(w), MT_OK);
    mt_wal_close(w);

    uint64_t groups2[12];
    size_t lens2[12];
    int ids2[12];
    memcpy(groups2, groups, sizeof groups);
    memcpy(lens2, lens, sizeof lens);
    memcpy(ids2, ids, sizeof ids);
    groups2[n] = 99;
    lens2[n] = 50;
    ids2[n] = 50;
    expect_on_disk(path, groups2, lens2, ids2, n + 1);
    free(path);
}

static void test_wal_empty_records_are_replayed(void **state)
{
    /* A record may have an empty payload, first or between others. */
    char path[512];
    snprintf(path, sizeof path, "%s/wal", (char *) *state);
    mt_wal *w = open_ok(path, MIB);
    append_payload(w, 1, 0, 1);
    append_payload(w, 2, 5, 2);
    append_payload(w, 3, 0, 3);
    assert_int_equal(mt_wal_used(w), 2 * rec_size(0) + rec_size(5));
    assert_int_equal(mt_wal_sync(w), MT_OK);
    mt_wal_close(w);
    static const uint64_t groups[] = {1, 2, 3};
    static const size_t lens[] = {0, 5, 0};
    static const int ids[] = {1, 2, 3};
    expect_on_disk(path, groups, lens, ids, 3);
}

static void test_wal_fresh_file_replays_nothing(void **state)
{
    char *path = path_in(state, "wal");
    mt_wal *w = open_ok(path, MIB);
    seen s;
    assert_int_equal(replay(w, &s), 0);
    assert_int_equal(mt_wal_used(w), 0);
    mt_wal_close(w);
    free(path);
}

static void test_wal_replay_stops_when_the_callback_says_so(void **state)
{
    char *path = path_in(state, "wal");
    mt_wal *w = open_ok(path, MIB);
    for (int i = 1; i <= 4; i++) {
        append_payload(w, (uint64_t) i, 16, i);
    }
    mt_wal_close(w);

    w = open_ok(path, MIB);
    seen s;
    memset(&s, 0, sizeof s);
    s.stop_at = 2;
    s.stop_rc = MT_EFULL;
    assert_int_equal(mt_wal_replay(w, collect, &s), MT_EFULL);
    assert_int_equal(s.count, 2);
    assert_int_equal(s.group[1], 2);
    seen_free(&s);
    mt_wal_close(w);
    free(path);
}

static void test_wal_torn_tail_stops_replay_before_it(void **state)
{
    /* Where the damage is, relative to the last of three records of 40 bytes. */
    typedef struct tear {
        const char *what;
        uint64_t off;   /* from the start of the last record */
        size_t n;       /* bytes overwritten with 0xa5 */
    } tear;
    static const tear cases[] = {
        {"one payload byte", REC_HDR + 5, 1},
        {"last payload byte", REC_HDR + 39, 1},
        {"whole payload", REC_HDR, 40},
        {"magic", 0, 4},
        {"generation", 4, 4},
        {"group id", 8, 8},
        {"length", 20, 4},
        {"CRC", 24, 4},
    };
    static const uint64_t groups[] = {1, 2, 3};
    static const size_t lens[] = {40, 40, 40};
    static const int ids[] = {1, 2, 3};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *path = path_in(state, "wal");
        unlink(path);
        mt_wal *w = open_ok(path, MIB);
        for (int k = 0; k < 3; k++) {
            append_payload(w, groups[k], lens[k], ids[k]);
        }
        assert_int_equal(mt_wal_sync(w), MT_OK);
        mt_wal_close(w);

        uint64_t last = HDR_SIZE + 2 * rec_size(40);
        uint8_t junk[64];
        memset(junk, 0xa5, sizeof junk);
        poke(path, last + cases[i].off, junk, cases[i].n);

        w = open_ok(path, MIB);
        seen s;
        int got = replay(w, &s);
        if (got != 2) {
            print_error("torn %s: replayed %d records, want 2\n", cases[i].what, got);
            fail();
        }
        seen_free(&s);
        /* The writer continues where the valid records end. */
        assert_int_equal(mt_wal_used(w), 2 * rec_size(40));
        mt_wal_close(w);
        expect_on_disk(path, groups, lens, ids, 2);
        free(path);
    }
}

static void test_wal_append_after_torn_tail_overwrites_it(void **state)
{
    char *path = path_in(state, "wal");
    mt_wal *w = open_ok(path, MIB);
    append_payload(w, 1, 100, 1);
    append_payload(w, 2, 100, 2);
    mt_wal_close(w);
    poke_byte(path, HDR_SIZE + rec_size(100) + REC_HDR + 50, 0xff);

    w = open_ok(path, MIB);
    seen s;
    assert_int_equal(replay(w, &s), 1);
    seen_free(&s);
    append_payload(w, 2, 10, 20); /* the retried group, shorter this time */
    assert_int_equal(mt_wal_sync(w), MT_OK);
    mt_wal_close(w);

    static const uint64_t groups[] = {1, 2};
    static const size_t lens[] = {100, 10};
    static const int ids[] = {1, 20};
    expect_on_disk(path, groups, lens, ids, 2);
    free(path);
}

static void test_wal_damage_in_the_middle_hides_everything_after_it(void **state)
{
    char *path = path_in(state, "wal");
    mt_wal *w = open_ok(path, MIB);
    for (int i = 1; i <= 4; i++) {
        append_payload(w, (uint64_t) i, 24, i);
    }
    mt_wal_close(w);
    poke_byte(path, HDR_SIZE + rec_size(24) + REC_HDR, 0x00); /* record 2's payload */
    static const uint64_t groups[] = {1};
    static const size_t lens[] = {24};
    static const int ids[] = {1};
    expect_on_disk(path, groups, lens, ids, 1);
    free(path);
}

/* ---- checkpoints at the head ---- */

static void test_wal_checkpoint_at_the_head_leaves_nothing_to_replay(void **state)
{
    char *path = path_in(state, "wal");
    mt_wal *w = open_ok(path, MIB);
    for (int i = 1; i <= 5; i++) {
        append_payload(w, (uint64_t) i, 64, i);
    }
    assert_int_equal(mt_wal_sync(w), MT_OK);
    assert_int_equal(mt_wal_checkpoint(w, mt_wal_tell(w), "", 0), MT_OK);
    assert_int_equal(mt_wal_used(w), 0);
    mt_wal_close(w);

    /* Nothing is replayed after the checkpoint, though the old bytes are still on disk. */
    expect_on_disk(path, NULL, NULL, NULL, 0);

    /* New records follow the checkpoint's position. */
    w = open_ok(path, MIB);
    seen s;
    assert_int_equal(replay(w, &s), 0);
    append_payload(w, 6, 64, 6);
    assert_int_equal(mt_wal_sync(w), MT_OK);
    mt_wal_close(w);
    static const uint64_t groups[] = {6};
    static const size_t lens[] = {64};
    static const int ids[] = {6};
    expect_on_disk(path, groups, lens, ids, 1);

    /* Several checkpoints in a row keep working, and survive reopening. */
    w = open_ok(path, MIB);
    assert_int_equal(replay(w, &s), 1);
    seen_free(&s);
    assert_int_equal(mt_wal_checkpoint(w, mt_wal_tell(w), "", 0), MT_OK);
    assert_int_equal(mt_wal_checkpoint(w, mt_wal_tell(w), "", 0), MT_OK);
    append_payload(w, 7, 8, 7);
    mt_wal_close(w);
    static const uint64_t groups7[] = {7};
    static const size_t lens7[] = {8};
    static const int ids7[] = {7};
    expect_on_disk(path, groups7, lens7, ids7, 1);
    free(path);
}

/* ---- the ring ---- */

static void test_wal_replay_starts_at_the_checkpoint_position(void **state)
{
    char *path = path_in(state, "wal");
    mt_wal *w = open_ok(path, MIB);
    for (int i = 1; i <= 3; i++) {
        append_payload(w, (uint64_t) i, 100, i);
    }
    /* A checkpoint of the state after group 3; groups 4 and 5 are appended meanwhile. */
    mt_wal_pos p = mt_wal_tell(w);
    append_payload(w, 4, 100, 4);
    append_payload(w, 5, 100, 5);
    assert_int_equal(mt_wal_used(w), 5 * rec_size(100));
    assert_int_equal(mt_wal_checkpoint(w, p, "after 3", 7), MT_OK);
    assert_int_equal(mt_wal_used(w), 2 * rec_size(100));
    mt_wal_pos cp = mt_wal_checkpoint_pos(w);
    assert_int_equal(cp.gen, p.gen);
    assert_int_equal(cp.off, p.off);
    assert_int_equal(mt_wal_sync(w), MT_OK);
    mt_wal_close(w);

    static const uint64_t groups[] = {4, 5};
    static const size_t lens[] = {100, 100};
    static const int ids[] = {4, 5};
    expect_on_disk(path, groups, lens, ids, 2);
    w = open_ok(path, MIB);
    const void *snap;
    size_t len;
    mt_wal_snapshot(w, &snap, &len);
    assert_int_equal(len, 7);
    assert_memory_equal(snap, "after 3", 7);
    mt_wal_close(w);
    free(path);
}

static void test_wal_wraps_to_the_front_and_replays_across_the_wrap(void **state)
{
    char *path = path_in(state, "wal");
    mt_wal *w = open_ok(path, MIB);
    const size_t len = 20000;
    const int fit = (int) ((MIB - HDR_SIZE) / rec_size(len)); /* records in one lap */
    uint64_t groups[MAX_SEEN];
    size_t lens[MAX_SEEN];
    int ids[MAX_SEEN];
    mt_wal_pos p = {0, 0};
    int g = 0;
    for (; g < fit; g++) {
        if (g == 30) {
            p = mt_wal_tell(w); /* a checkpoint after 30 records */
        }
        append_payload(w, (uint64_t) g + 1, len, g + 1);
    }
    /* Full: the front holds records a replay still needs. */
    uint8_t *buf = calloc(1, len);
    assert_non_null(buf);
    assert_int_equal(mt_wal_append(w, 999, buf, len), MT_EFULL);
    assert_int_equal(mt_wal_checkpoint(w, p, "", 0), MT_OK);
    /* Now the space before the checkpoint is free: 30 records fit at the front. */
    int wrapped = 0;
    for (;;) {
        fill_payload(buf, len, g + 1);
        mt_err rc = mt_wal_append(w, (uint64_t) g + 1, buf, len);
        if (rc == MT_EFULL) {
            break;
        }
        assert_int_equal(rc, MT_OK);
        g++;
        wrapped++;
    }
    assert_int_equal(wrapped, 30);
    assert_int_equal(mt_wal_tell(w).gen, p.gen + 1);
    assert_int_equal(mt_wal_append(w, 999, buf, len), MT_EFULL);
    assert_int_equal(mt_wal_sync(w), MT_OK);
    mt_wal_close(w);
    free(buf);

    /* Records 31..fit of the first lap, then 1..30 of the second, in order. */
    int n = 0;
    for (int i = 30; i < g; i++) {
        assert_true(n < MAX_SEEN);
        groups[n] = (uint64_t) i + 1;
        lens[n] = len;
        ids[n] = i + 1;
        n++;
    }
    expect_on_disk(path, groups, lens, ids, n);

    /* A checkpoint at the head: the older lap's records behind it are not read again. */
    w = open_ok(path, MIB);
    seen s;
    assert_int_equal(replay(w, &s), n);
    seen_free(&s);
    assert_int_equal(mt_wal_checkpoint(w, mt_wal_tell(w), "", 0), MT_OK);
    mt_wal_close(w);
    expect_on_disk(path, NULL, NULL, NULL, 0);
    free(path);
}

static void test_wal_space_before_a_checkpoint_is_reused_only_once_it_is_recorded(void **state)
{
    char *path = path_in(state, "wal");
    mt_wal *w = open_ok(path, MIB);
    const size_t len = 100000;
    int n = 0;
    while (mt_wal_used(w) + rec_size(len) <= mt_wal_capacity(w)) {
        append_payload(w, (uint64_t) n + 1, len, n + 1);
        n++;
    }
    /* A checkpoint is being made of everything so far: until it is recorded, no room. */
    mt_wal_pos p = mt_wal_tell(w);
    uint8_t *buf = calloc(1, len);
    assert_non_null(buf);
    assert_int_equal(mt_wal_append(w, 100, buf, len), MT_EFULL);
    assert_int_equal(mt_wal_append(w, 100, buf, len), MT_EFULL);
    assert_int_equal(mt_wal_checkpoint(w, p, "", 0), MT_OK);
    fill_payload(buf, len, 100);
    assert_int_equal(mt_wal_append(w, 100, buf, len), MT_OK);
    assert_int_equal(mt_wal_tell(w).gen, p.gen + 1);
    assert_int_equal(mt_wal_tell(w).off, HDR_SIZE + rec_size(len));
    mt_wal_close(w);
    free(buf);
    static const uint64_t groups[] = {100};
    static const size_t lens[] = {100000};
    static const int ids[] = {100};
    expect_on_disk(path, groups, lens, ids, 1);
    free(path);
}

static void test_wal_torn_checkpoint_header_falls_back_to_the_previous_position(void **state)
{
    typedef struct tear {
        const char *what;
        uint64_t off; /* in the newer header's slot */
    } tear;
    static const tear cases[] = {
        {"snapshot", 128 + 1},
        {"position: generation", 28 + 2},
        {"position: offset", 28 + 9},
        {"position: CRC", 28 + 13},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *path = path_in(state, "wal");
        unlink(path);
        mt_wal *w = open_ok(path, MIB);
        append_payload(w, 1, 50, 1);
        mt_wal_pos p1 = mt_wal_tell(w);
        append_payload(w, 2, 50, 2);
        assert_int_equal(mt_wal_checkpoint(w, p1, "one", 3), MT_OK); /* header 2, slot 0 */
        append_payload(w, 3, 50, 3);
        mt_wal_pos p2 = mt_wal_tell(w);
        append_payload(w, 4, 50, 4);
        assert_int_equal(mt_wal_checkpoint(w, p2, "two", 3), MT_OK); /* header 3, slot 1 */
        assert_int_equal(mt_wal_sync(w), MT_OK);
        mt_wal_close(w);

        uint8_t b = 0x5a;
        poke(path, SLOT_SIZE + cases[i].off, &b, 1);
        w = open_ok(path, MIB);
        const void *snap;
        size_t len;
        mt_wal_snapshot(w, &snap, &len);
        if (len != 3 || memcmp(snap, "one", 3) != 0) {
            print_error("torn %s: the previous checkpoint was not used\n", cases[i].what);
            fail();
        }
        mt_wal_close(w);
        static const uint64_t groups[] = {2, 3, 4};
        static const size_t lens[] = {50, 50, 50};
        static const int ids[] = {2, 3, 4};
        expect_on_disk(path, groups, lens, ids, 3);
        free(path);
    }
}

static void test_wal_skip_makes_room_for_a_record_larger_than_either_side(void **state)
{
    char *path = path_in(state, "wal");
    mt_wal *w = open_ok(path, MIB);
    const uint64_t cap = mt_wal_capacity(w);
    /* Everything checkpointed, with the position in the middle of the file. */
    append_payload(w, 1, (size_t) (cap / 2), 1);
    assert_int_equal(mt_wal_checkpoint(w, mt_wal_tell(w), "", 0), MT_OK);
    assert_int_equal(mt_wal_used(w), 0);
    const size_t big = (size_t) (cap * 3 / 5);
    uint8_t *buf = malloc(big);
    assert_non_null(buf);
    fill_payload(buf, big, 2);
    assert_int_equal(mt_wal_append(w, 2, buf, big), MT_EFULL);
    /* Leave the rest of the lap: still no room before the checkpoint's position... */
    assert_int_equal(mt_wal_skip(w), MT_OK);
    assert_int_equal(mt_wal_append(w, 2, buf, big), MT_EFULL);
    /* ...and no second skip while a lap ahead of it. */
    assert_int_equal(mt_wal_skip(w), MT_EFULL);
    /* A checkpoint at the new position frees the whole file. */
    assert_int_equal(mt_wal_checkpoint(w, mt_wal_tell(w), "", 0), MT_OK);
    assert_int_equal(mt_wal_used(w), 0);
    assert_int_equal(mt_wal_append(w, 2, buf, big), MT_OK);
    assert_int_equal(mt_wal_sync(w), MT_OK);
    mt_wal_close(w);
    free(buf);
    const uint64_t groups[] = {2};
    const size_t lens[] = {big};
    static const int ids[] = {2};
    expect_on_disk(path, groups, lens, ids, 1);
    free(path);
}

static void test_wal_header_of_the_previous_format_is_read(void **state)
{
    /* The previous format had no position: its records start at the front. */
    char *path = path_in(state, "wal");
    mt_wal *w = open_ok(path, MIB);
    for (int i = 1; i <= 3; i++) {
        append_payload(w, (uint64_t) i, 70, i);
    }
    assert_int_equal(mt_wal_sync(w), MT_OK);
    mt_wal_close(w);
    uint8_t zero[16] = {0};
    poke(path, SLOT_SIZE + 28, zero, sizeof zero);
    static const uint64_t groups[] = {1, 2, 3};
    static const size_t lens[] = {70, 70, 70};
    static const int ids[] = {1, 2, 3};
    expect_on_disk(path, groups, lens, ids, 3);
    free(path);
}

/* ---- full and too big ---- */

static void test_wal_append_is_efull_when_full_and_etoobig_when_it_never_fits(void **state)
{
    char *path = path_in(state, "wal");
    mt_wal *w = open_ok(path, MIB);
    const uint64_t cap = mt_wal_capacity(w);
    assert_int_equal(cap, MIB - HDR_SIZE);
    const size_t biggest = (size_t) (cap - REC_HDR); /* fills the file exactly */
    uint8_t *big = calloc(1, biggest + 64);
    assert_non_null(big);

    /* Could never fit, even in an empty file. */
    assert_int_equal(mt_wal_append(w, 1, big, biggest + 1), MT_ETOOBIG);
    assert_int_equal(mt_wal_append(w, 1, big, biggest + 64), MT_ETOOBIG);
    assert_int_equal(mt_wal_append(w, 1, big, (size_t) UINT32_MAX + 1), MT_ETOOBIG);
    assert_int_equal(mt_wal_used(w), 0);

    /* The largest record fits exactly; after it, even an empty one does not. */
    fill_payload(big, biggest, 1);
    assert_int_equal(mt_wal_append(w, 1, big, biggest), MT_OK);
    assert_int_equal(mt_wal_used(w), cap);
    assert_int_equal(mt_wal_append(w, 2, big, 0), MT_EFULL);
    assert_int_equal(mt_wal_append(w, 2, big, biggest + 1), MT_ETOOBIG);
    assert_int_equal(mt_wal_used(w), cap);
    mt_wal_close(w);

    static const uint64_t g1[] = {1};
    const size_t l1[] = {biggest};
    static const int i1[] = {1};
    expect_on_disk(path, g1, l1, i1, 1);

    /* After a checkpoint there is room again, at the front. */
    w = open_ok(path, MIB);
    seen s;
    assert_int_equal(replay(w, &s), 1);
    seen_free(&s);
    assert_int_equal(mt_wal_checkpoint(w, mt_wal_tell(w), "", 0), MT_OK);
    append_payload(w, 2, 10, 2);
    mt_wal_close(w);
    free(big);
    free(path);
}

static void test_wal_efull_leaves_earlier_records_intact(void **state)
{
    char *path = path_in(state, "wal");
    mt_wal *w = open_ok(path, MIB);
    const size_t len = 20000;
    uint64_t groups[MAX_SEEN];
    size_t lens[MAX_SEEN];
    int ids[MAX_SEEN];
    int n = 0;
    uint8_t *p = malloc(len);
    assert_non_null(p);
    for (;;) {
        fill_payload(p, len, n);
        mt_err rc = mt_wal_append(w, (uint64_t) n + 1, p, len);
        if (rc == MT_EFULL) {
            break;
        }
        assert_int_equal(rc, MT_OK);
        assert_true(n < MAX_SEEN);
        groups[n] = (uint64_t) n + 1;
        lens[n] = len;
        ids[n] = n;
        n++;
    }
    free(p);
    assert_int_equal(n, (int) ((MIB - HDR_SIZE) / rec_size(len)));
    assert_true(mt_wal_capacity(w) - mt_wal_used(w) < rec_size(len));
    /* A smaller record still fits in what is left. */
    append_payload(w, 1000, 16, 1000);
    groups[n] = 1000;
    lens[n] = 16;
    ids[n] = 1000;
    n++;
    assert_int_equal(mt_wal_sync(w), MT_OK);
    mt_wal_close(w);
    expect_on_disk(path, groups, lens, ids, n);
    free(path);
}

/* ---- undo ---- */

static void test_wal_undo_last_makes_the_last_record_unreadable(void **state)
{
    char *path = path_in(state, "wal");
    mt_wal *w = open_ok(path, MIB);
    append_payload(w, 1, 50, 1);
    append_payload(w, 2, 60, 2);
    assert_int_equal(mt_wal_sync(w), MT_OK);
    assert_int_equal(mt_wal_undo_last(w), MT_OK);
    assert_int_equal(mt_wal_used(w), rec_size(50));
    /* Only the last record can be undone; a second undo does nothing. */
    assert_int_equal(mt_wal_undo_last(w), MT_OK);
    assert_int_equal(mt_wal_used(w), rec_size(50));
    mt_wal_close(w);

    static const uint64_t g1[] = {1};
    static const size_t l1[] = {50};
    static const int i1[] = {1};
    expect_on_disk(path, g1, l1, i1, 1);

    /* The next record takes the undone one's place. */
    w = open_ok(path, MIB);
    seen s;
    assert_int_equal(replay(w, &s), 1);
    seen_free(&s);
    /* Right after replay there is nothing of ours to undo. */
    assert_int_equal(mt_wal_undo_last(w), MT_OK);
    assert_int_equal(mt_wal_used(w), rec_size(50));
    append_payload(w, 2, 8, 22);
    assert_int_equal(mt_wal_sync(w), MT_OK);
    mt_wal_close(w);
    static const uint64_t g2[] = {1, 2};
    static const size_t l2[] = {50, 8};
    static const int i2[] = {1, 22};
    expect_on_disk(path, g2, l2, i2, 2);
    free(path);
}

static void test_wal_undo_of_the_only_record_leaves_nothing(void **state)
{
    char *path = path_in(state, "wal");
    mt_wal *w = open_ok(path, MIB);
    assert_int_equal(mt_wal_undo_last(w), MT_OK); /* nothing appended yet */
    append_payload(w, 1, 1000, 1);
    assert_int_equal(mt_wal_undo_last(w), MT_OK);
    assert_int_equal(mt_wal_used(w), 0);
    mt_wal_close(w);
    expect_on_disk(path, NULL, NULL, NULL, 0);
    free(path);
}

static void test_wal_undo_does_not_touch_a_record_a_checkpoint_covers(void **state)
{
    char *path = path_in(state, "wal");
    mt_wal *w = open_ok(path, MIB);
    append_payload(w, 1, 10, 1);
    assert_int_equal(mt_wal_checkpoint(w, mt_wal_tell(w), "", 0), MT_OK);
    assert_int_equal(mt_wal_undo_last(w), MT_OK); /* the checkpoint covers the last record */
    append_payload(w, 2, 10, 2);
    mt_wal_close(w);
    static const uint64_t g[] = {2};
    static const size_t l[] = {10};
    static const int ids[] = {2};
    expect_on_disk(path, g, l, ids, 1);
    free(path);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, mt_test_setup_dir, mt_test_teardown_dir)
    const struct CMUnitTest tests[] = {
        T(test_wal_open_creates_a_preallocated_file_of_the_given_size),
        T(test_wal_existing_file_keeps_its_own_size),
        T(test_wal_size_below_one_mib_is_einval),
        T(test_wal_unopenable_path_is_eio),
        T(test_wal_damaged_header_is_eio),
        T(test_wal_damaged_newer_slot_falls_back_to_the_previous_checkpoint),
        T(test_wal_checkpoint_saves_the_snapshot),
        T(test_wal_replays_records_in_order_with_exact_payloads),
        T(test_wal_empty_records_are_replayed),
        T(test_wal_fresh_file_replays_nothing),
        T(test_wal_replay_stops_when_the_callback_says_so),
        T(test_wal_torn_tail_stops_replay_before_it),
        T(test_wal_append_after_torn_tail_overwrites_it),
        T(test_wal_damage_in_the_middle_hides_everything_after_it),
        T(test_wal_checkpoint_at_the_head_leaves_nothing_to_replay),
        T(test_wal_replay_starts_at_the_checkpoint_position),
        T(test_wal_wraps_to_the_front_and_replays_across_the_wrap),
        T(test_wal_space_before_a_checkpoint_is_reused_only_once_it_is_recorded),
        T(test_wal_torn_checkpoint_header_falls_back_to_the_previous_position),
        T(test_wal_skip_makes_room_for_a_record_larger_than_either_side),
        T(test_wal_header_of_the_previous_format_is_read),
        T(test_wal_append_is_efull_when_full_and_etoobig_when_it_never_fits),
        T(test_wal_efull_leaves_earlier_records_intact),
        T(test_wal_undo_last_makes_the_last_record_unreadable),
        T(test_wal_undo_of_the_only_record_leaves_nothing),
        T(test_wal_undo_does_not_touch_a_record_a_checkpoint_covers),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
