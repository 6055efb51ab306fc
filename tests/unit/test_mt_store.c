/*
 * test_mt_store.c - the store's checkpoints, made on a thread of their own
 * while the writer goes on: commits while a checkpoint is held at each of
 * its stages, checkpoints on request, a process killed (SIGKILL) at each
 * stage of a checkpoint, and a write-ahead file that fills up while a
 * checkpoint is held (the writer waits instead of overwriting).
 *
 * A checkpoint is held by the store's checkpoint hook, which blocks until
 * the test lets it go, so no verdict depends on how fast anything runs.
 * Crashes are real: a child process opens the store, reports each
 * acknowledged write on a pipe, and is killed with SIGKILL; the test then
 * opens the store and checks every acknowledged write.
 *
 * The write-ahead sync runs on a thread of its own too: a group is seen by
 * readers and finished only once it is durable, while the writer goes on,
 * and a failed sync stops every later write. A worker's read of the latest
 * state, paused between its rounds, renews on what was committed since.
 */
#include "mt_test.h"
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <unistd.h>
#include "mt_store.h"
#include "mt_util.h"

#define MIB (1ULL << 20)

static mt_store *open_store(const char *dir)
{
    /* Checkpoints only when asked for or forced, so that the tests can count them. */
    mt_store_opts o = {.dir = dir, .map_size = 256 * MIB, .wal_size = MIB, .nosync = false,
                       .checkpoint_interval_us = 3600 * 1000000LL};
    mt_store *s = NULL;
    mt_err rc = mt_store_open(&o, &s);
    if (rc) {
        print_error("mt_store_open('%s'): %s\n", dir, mt_err_str(rc));
        fail();
    }
    return s;
}

/* ---- writes: key "k%06d" in kv, a value derived from the key's number ---- */

typedef struct put_job {
    int i;
    size_t size;   /* bytes of value */
} put_job;

static void make_key(char *key, int i)
{
    snprintf(key, 16, "k%06d", i);
}

static void fill_value(uint8_t *v, size_t n, int i)
{
    for (size_t k = 0; k < n; k++) {
        v[k] = (uint8_t) (i * 131 + k * 7 + 3);
    }
}

static mt_err run_put(mt_txn *t, void *arg)
{
    const put_job *j = arg;
    char key[16];
    make_key(key, j->i);
    uint8_t *v = malloc(j->size ? j->size : 1);
    if (!v) {
        return MT_ENOMEM;
    }
    fill_value(v, j->size, j->i);
    mt_err rc = mt_store_put(t, MT_DB_KV, key, strlen(key), v, j->size, 0);
    free(v);
    return rc;
}

static mt_err put(mt_store *s, int i, size_t size)
{
    put_job j = {i, size};
    return mt_store_write(s, run_put, &j);
}

/* Key i's value in t. */
static mt_err get_key(mt_txn *t, int i, const void **v, size_t *n)
{
    char key[16];
    make_key(key, i);
    return mt_store_get(t, MT_DB_KV, key, strlen(key), v, n);
}

/* Whether key i holds its value of 'size' bytes (false if absent; a wrong value fails). */
static bool has_value(mt_store *s, int i, size_t size)
{
    mt_txn *t;
    assert_int_equal(mt_store_read_begin(s, &t), MT_OK);
    const void *v;
    size_t n;
    mt_err rc = get_key(t, i, &v, &n);
    bool ok = false;
    if (rc == MT_OK) {
        uint8_t *want = malloc(size ? size : 1);
        assert_non_null(want);
        fill_value(want, size, i);
        ok = n == size && memcmp(v, want, size) == 0;
        free(want);
        if (!ok) {
            mt_store_read_end(t);
            fail_msg("key %d has a wrong value (%zu bytes, want %zu)", i, n, size);
        }
    } else {
        assert_int_equal(rc, MT_ENOTFOUND);
    }
    mt_store_read_end(t);
    return ok;
}

/* ---- a hook that holds checkpoint 'n' at 'stage' until released ---- */

typedef struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    mt_store_ckpt_stage stage;
    uint64_t n;
    bool held;      /* the checkpoint thread is waiting in the hook */
    bool released;
    int stages_seen; /* bit per stage, of checkpoint n */
} gate;

static void gate_init(gate *g, mt_store_ckpt_stage stage, uint64_t n)
{
    memset(g, 0, sizeof *g);
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    g->stage = stage;
    g->n = n;
}

static void gate_destroy(gate *g)
{
    pthread_mutex_destroy(&g->mu);
    pthread_cond_destroy(&g->cv);
}

static void gate_hook(mt_store_ckpt_stage stage, uint64_t n, void *arg)
{
    gate *g = arg;
    pthread_mutex_lock(&g->mu);
    if (n == g->n) {
        g->stages_seen |= 1 << stage;
    }
    if (n == g->n && stage == g->stage) {
        g->held = true;
        pthread_cond_broadcast(&g->cv);
        while (!g->released) {
            pthread_cond_wait(&g->cv, &g->mu);
        }
        g->held = false;
    }
    pthread_mutex_unlock(&g->mu);
}

static void gate_wait_held(gate *g)
{
    pthread_mutex_lock(&g->mu);
    while (!g->held) {
        pthread_cond_wait(&g->cv, &g->mu);
    }
    pthread_mutex_unlock(&g->mu);
}

static void gate_release(gate *g)
{
    pthread_mutex_lock(&g->mu);
    g->released = true;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

static uint64_t checkpoints(mt_store *s)
{
    mt_store_stats st;
    mt_store_get_stats(s, &st);
    return st.checkpoints;
}

/* ---- in one process ---- */

static void test_store_commits_while_a_checkpoint_is_held_at_each_stage(void **state)
{
    static const mt_store_ckpt_stage stages[] = {
        MT_STORE_CKPT_SYNCING, MT_STORE_CKPT_SYNCED, MT_STORE_CKPT_RECORDED,
    };
    for (size_t k = 0; k < sizeof stages / sizeof stages[0]; k++) {
        char dir[600];
        snprintf(dir, sizeof dir, "%s/s%zu", (char *) *state, k);
        mt_store *s = open_store(dir);
        /* The checkpoint at open is made before the threads start, not through the hook. */
        assert_int_equal(checkpoints(s), 1);
        gate g;
        gate_init(&g, stages[k], 1);
        mt_store_set_checkpoint_hook(s, gate_hook, &g);
        for (int i = 0; i < 20; i++) {
            assert_int_equal(put(s, i, 500), MT_OK);
        }
        assert_int_equal(mt_store_checkpoint(s, false), MT_OK);
        gate_wait_held(&g);
        /* Held: the writer still commits, and the checkpoint is not yet counted. */
        for (int i = 20; i < 220; i++) {
            assert_int_equal(put(s, i, 500), MT_OK);
        }
        assert_int_equal(checkpoints(s), 1);
        assert_true(has_value(s, 219, 500));
        gate_release(&g);
        /* A checkpoint asked for now covers every write before the call. */
        assert_int_equal(mt_store_checkpoint(s, true), MT_OK);
        assert_true(checkpoints(s) >= 3);
        assert_int_equal(g.stages_seen, 7);
        mt_store_set_checkpoint_hook(s, NULL, NULL);
        mt_store_close(s);
        gate_destroy(&g);

        s = open_store(dir);
        for (int i = 0; i < 220; i++) {
            assert_true(has_value(s, i, 500));
        }
        mt_store_close(s);
    }
}

/*
 * Commits start a checkpoint of their own once the interval has passed
 * (1 s unless set: see checkpoint_due in mt_store.c), and an idle store
 * starts none.
 */
static void test_store_commits_start_a_checkpoint_after_the_interval(void **state)
{
    mt_store_opts o = {.dir = *state, .map_size = 256 * MIB, .wal_size = MIB, .nosync = false,
                       .checkpoint_interval_us = 50 * 1000};
    mt_store *s = NULL;
    assert_int_equal(mt_store_open(&o, &s), MT_OK);
    uint64_t at_open = checkpoints(s);
    usleep(300 * 1000);
    assert_int_equal(checkpoints(s), at_open); /* nothing written: none */
    assert_int_equal(put(s, 1, 10), MT_OK);
    int64_t deadline = mt_mono_us() + 20 * 1000000LL;
    while (checkpoints(s) == at_open && mt_mono_us() < deadline) {
        usleep(10 * 1000);
    }
    assert_true(checkpoints(s) > at_open);
    mt_store_close(s);
}

static void test_store_checkpoint_on_request_is_durable_even_when_idle(void **state)
{
    mt_store *s = open_store(*state);
    /* Nothing written: a checkpoint still runs and is durable. */
    assert_int_equal(mt_store_checkpoint(s, true), MT_OK);
    assert_int_equal(checkpoints(s), 2);
    assert_int_equal(put(s, 1, 10), MT_OK);
    assert_int_equal(mt_store_checkpoint(s, true), MT_OK);
    assert_int_equal(checkpoints(s), 3);
    mt_store_close(s);
    s = open_store(*state);
    assert_true(has_value(s, 1, 10));
    mt_store_close(s);
}

/* ---- in a child process killed with SIGKILL ---- */

enum { MSG_HELD = -1, MSG_DONE = -2 };

typedef struct crash_case {
    const char *what;
    mt_store_ckpt_stage stage; /* where checkpoint 1 is held when the child is killed */
    int writes;                /* after the hold */
    size_t size;               /* bytes per write */
    bool fills_wal;            /* the writes cannot all fit the write-ahead file */
} crash_case;

static int report_fd = -1;

static void report(int msg)
{
    ssize_t rc = write(report_fd, &msg, sizeof msg);
    (void) rc;
}

static void report_and_hold(mt_store_ckpt_stage stage, uint64_t n, void *arg)
{
    const crash_case *c = arg;
    if (n == 1 && stage == c->stage) {
        report(MSG_HELD);
        for (;;) {
            pause();
        }
    }
}

/* The child: never returns. Writes 0..49 before the checkpoint, the rest while it is held. */
static void child(const char *dir, const crash_case *c)
{
    /* Checkpoints only when asked for or forced, so that the tests can count them. */
    mt_store_opts o = {.dir = dir, .map_size = 256 * MIB, .wal_size = MIB, .nosync = false,
                       .checkpoint_interval_us = 3600 * 1000000LL};
    mt_store *s = NULL;
    if (mt_store_open(&o, &s)) {
        _exit(2);
    }
    mt_store_set_checkpoint_hook(s, report_and_hold, (void *) c);
    for (int i = 0; i < 50; i++) {
        if (put(s, i, 1000)) {
            _exit(3);
        }
        report(i);
    }
    if (mt_store_checkpoint(s, false)) {
        _exit(4);
    }
    for (int i = 50; i < 50 + c->writes; i++) {
        if (put(s, i, c->size)) {
            _exit(5);
        }
        report(i);
    }
    report(MSG_DONE);
    for (;;) {
        pause();
    }
}

static void test_store_kill9_during_a_checkpoint_keeps_every_acknowledged_write(void **state)
{
    static const crash_case cases[] = {
        {"held before the sync", MT_STORE_CKPT_SYNCING, 200, 1000, false},
        {"held after the sync, before the header", MT_STORE_CKPT_SYNCED, 200, 1000, false},
        {"held after the header, before the pin moves", MT_STORE_CKPT_RECORDED, 200, 1000, false},
        /* 40 x 64 KB cannot fit a 1 MiB write-ahead file: the writer must wait. */
        {"held while the write-ahead file fills up", MT_STORE_CKPT_SYNCING, 40, 65536, true},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const crash_case *c = &cases[k];
        char dir[600];
        snprintf(dir, sizeof dir, "%s/c%zu", (char *) *state, k);
        int fds[2];
        assert_int_equal(pipe(fds), 0);
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            close(fds[0]);
            report_fd = fds[1];
            child(dir, c);
        }
        close(fds[1]);
        const int total = 50 + c->writes;
        bool *acked = calloc((size_t) total, sizeof *acked);
        assert_non_null(acked);
        int n_acked = 0, n_after_hold = 0;
        bool held = false, done = false;
        /*
         * Read reports until the child has written everything while the
         * checkpoint is held, or, when the writes cannot fit, until it has
         * been quiet for a second (it waits for the checkpoint). The bounds
         * only stop a broken run; the verdicts below hold either way.
         */
        for (;;) {
            struct pollfd p = {fds[0], POLLIN, 0};
            int timeout_ms = c->fills_wal && held ? 1000 : 60000;
            int pr = poll(&p, 1, timeout_ms);
            if (pr == 0) {
                break;
            }
            int msg;
            ssize_t got = read(fds[0], &msg, sizeof msg);
            if (got != (ssize_t) sizeof msg) {
                break; /* the child exited */
            }
            if (msg == MSG_HELD) {
                held = true;
            } else if (msg == MSG_DONE) {
                done = true;
                break;
            } else if (msg >= 0 && msg < total) {
                acked[msg] = true;
                n_acked++;
                n_after_hold += held;
            }
        }
        kill(pid, SIGKILL);
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        close(fds[0]);
        if (!WIFSIGNALED(status)) {
            fail_msg("%s: the child exited with status %d", c->what,
                     WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        }
        assert_true(held);
        if (c->fills_wal) {
            /* It wrote while held, then waited rather than overwrite what a replay needs. */
            assert_false(done);
            assert_true(n_after_hold > 0);
            assert_true(n_acked < total);
        } else if (!done || n_acked != total) {
            fail_msg("%s: %d of %d writes acknowledged while the checkpoint was held", c->what,
                     n_acked, total);
        }

        mt_store *s = open_store(dir);
        for (int i = 0; i < total; i++) {
            size_t size = i < 50 ? 1000 : c->size;
            bool present = has_value(s, i, size);
            if (acked[i] && !present) {
                mt_store_close(s);
                fail_msg("%s: acknowledged write %d is lost", c->what, i);
            }
        }
        /* And the store goes on: a write and a checkpoint after recovery. */
        assert_int_equal(put(s, total, 10), MT_OK);
        assert_int_equal(mt_store_checkpoint(s, true), MT_OK);
        mt_store_close(s);
        s = open_store(dir);
        assert_true(has_value(s, total, 10));
        mt_store_close(s);
        free(acked);
    }
}

/* ---- a hook that holds (or fails) the write-ahead sync of the next group ---- */

typedef struct sync_gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool armed;     /* the next sync is held (or failed) */
    mt_err fail;    /* returned for it instead of holding, if set */
    bool held;      /* the sync thread is waiting in the hook */
    bool released;
    uint64_t group; /* the group it was called with */
} sync_gate;

static mt_err sync_gate_hook(uint64_t group, void *arg)
{
    sync_gate *g = arg;
    pthread_mutex_lock(&g->mu);
    mt_err rc = MT_OK;
    if (g->armed) {
        g->armed = false;
        g->group = group;
        rc = g->fail;
        if (!rc) {
            g->held = true;
            pthread_cond_broadcast(&g->cv);
            while (!g->released) {
                pthread_cond_wait(&g->cv, &g->mu);
            }
        }
    }
    pthread_mutex_unlock(&g->mu);
    return rc;
}

static void sync_gate_arm(sync_gate *g, mt_err fail)
{
    pthread_mutex_lock(&g->mu);
    g->armed = true;
    g->fail = fail;
    pthread_mutex_unlock(&g->mu);
}

/* Whether key i is in the last committed state, durable or not. */
static bool committed(mt_store *s, int i)
{
    mt_txn *t;
    assert_int_equal(mt_store_read_begin_latest(s, &t), MT_OK);
    const void *v;
    size_t n;
    mt_err rc = get_key(t, i, &v, &n);
    mt_store_read_end(t);
    return rc == MT_OK;
}

typedef struct put_async {
    put_job j;
    int *order; /* where its done callback writes its key, in turn */
    int *n;
    mt_err rc;
} put_async;

static void put_done(mt_err rc, void *arg)
{
    put_async *p = arg;
    p->rc = rc;
    p->order[(*p->n)++] = p->j.i;
}

/* A job that writes nothing: notes that it ran; its done callback counts. */
typedef struct nothing_job {
    atomic_int ran;
    int done;
} nothing_job;

static mt_err run_nothing(mt_txn *t, void *arg)
{
    (void) t;
    atomic_store(&((nothing_job *) arg)->ran, 1);
    return MT_OK;
}

static void nothing_done_cb(mt_err rc, void *arg)
{
    assert_int_equal(rc, MT_OK);
    ((nothing_job *) arg)->done++;
}

/* Runs done callbacks until 'want' have run (20 s at most: a hang, not a speed, fails). */
static void complete_until(mt_store *s, int *n, int want)
{
    int64_t deadline = mt_mono_us() + 20 * 1000000LL;
    while (*n < want && mt_mono_us() < deadline) {
        mt_store_complete(s);
        usleep(1000);
    }
    assert_int_equal(*n, want);
}

/*
 * The writer commits a group and goes on to the next while the sync thread
 * makes it durable; readers (mt_store_read_begin) and the jobs' callers see
 * a group only once its write-ahead record is synced.
 */
static void test_store_a_group_is_seen_and_finished_once_its_sync_is_done(void **state)
{
    mt_store *s = open_store(*state);
    sync_gate g = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    mt_store_set_sync_hook(s, sync_gate_hook, &g);
    assert_int_equal(put(s, 0, 100), MT_OK);
    mt_txn *before;
    assert_int_equal(mt_store_read_begin(s, &before), MT_OK);

    int order[2], n = 0;
    put_async a = {{1, 100}, order, &n, MT_EINVAL}, b = {{2, 100}, order, &n, MT_EINVAL};
    sync_gate_arm(&g, MT_OK);
    assert_int_equal(mt_store_submit(s, run_put, put_done, &a), MT_OK);
    pthread_mutex_lock(&g.mu);
    while (!g.held) {
        pthread_cond_wait(&g.cv, &g.mu);
    }
    pthread_mutex_unlock(&g.mu);
    /* Held: key 1 is committed, but neither readers nor its caller see it. */
    assert_true(committed(s, 1));
    assert_false(has_value(s, 1, 100));
    assert_true(has_value(s, 0, 100));
    mt_store_complete(s);
    assert_int_equal(n, 0);

    /* A job that writes nothing waits behind it too: it may answer with what that wrote. */
    nothing_job nothing = {0};
    assert_int_equal(mt_store_submit(s, run_nothing, nothing_done_cb, &nothing), MT_OK);
    int64_t ran_by = mt_mono_us() + 20 * 1000000LL;
    while (!atomic_load(&nothing.ran) && mt_mono_us() < ran_by) {
        usleep(1000);
    }
    assert_true(atomic_load(&nothing.ran)); /* in a group of its own, which wrote nothing */
    usleep(20 * 1000); /* time to be answered, were it answered before the held group */
    mt_store_complete(s);
    assert_int_equal(nothing.done, 0);

    /* The writer does not wait for that sync: the next job commits meanwhile. */
    assert_int_equal(mt_store_submit(s, run_put, put_done, &b), MT_OK);
    int64_t deadline = mt_mono_us() + 20 * 1000000LL;
    while (!committed(s, 2) && mt_mono_us() < deadline) {
        usleep(1000);
    }
    assert_true(committed(s, 2));
    assert_false(has_value(s, 2, 100));
    mt_store_complete(s);
    assert_int_equal(n, 0);
    assert_int_equal(nothing.done, 0);

    pthread_mutex_lock(&g.mu);
    g.released = true;
    pthread_cond_broadcast(&g.cv);
    pthread_mutex_unlock(&g.mu);
    complete_until(s, &n, 2);
    assert_int_equal(nothing.done, 1);
    assert_int_equal(a.rc, MT_OK);
    assert_int_equal(b.rc, MT_OK);
    assert_int_equal(order[0], 1);
    assert_int_equal(order[1], 2);
    assert_true(has_value(s, 1, 100));
    assert_true(has_value(s, 2, 100));
    mt_store_stats st;
    mt_store_get_stats(s, &st);
    assert_true(st.syncs >= 3); /* key 0's, key 1's held one, and key 2's after it */

    /* A read begun before keeps its state. */
    const void *v;
    size_t vl;
    assert_int_equal(mt_store_get(before, MT_DB_KV, "k000001", 7, &v, &vl), MT_ENOTFOUND);
    mt_store_read_end(before);
    mt_store_set_sync_hook(s, NULL, NULL);
    mt_store_close(s);

    s = open_store(*state);
    for (int i = 0; i < 3; i++) {
        assert_true(has_value(s, i, 100));
    }
    mt_store_close(s);
}

/*
 * A failed write-ahead sync fails its group, is never taken back by a later
 * sync that succeeds, and fails every later write; readers keep the last
 * durable state. A restart starts afresh from what was durable.
 */
static void test_store_a_failed_sync_fails_its_group_and_every_later_write(void **state)
{
    mt_store *s = open_store(*state);
    sync_gate g = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    mt_store_set_sync_hook(s, sync_gate_hook, &g);
    assert_int_equal(put(s, 0, 100), MT_OK);
    sync_gate_arm(&g, MT_EIO);
    assert_int_equal(put(s, 1, 100), MT_EIO);
    assert_true(g.group > 0);
    assert_false(has_value(s, 1, 100));
    assert_int_equal(put(s, 2, 100), MT_EIO);
    assert_false(committed(s, 2)); /* refused, not run */
    assert_true(has_value(s, 0, 100));
    mt_store_set_sync_hook(s, NULL, NULL);
    mt_store_close(s);

    s = open_store(*state);
    assert_true(has_value(s, 0, 100));
    assert_false(has_value(s, 2, 100));
    assert_int_equal(put(s, 3, 100), MT_OK);
    assert_true(has_value(s, 3, 100));
    mt_store_close(s);
}

/* A paused read lets go of its snapshot; renewed, it sees what was committed since. */
static void test_store_a_paused_read_renews_on_the_latest_state(void **state)
{
    mt_store *s = open_store(*state);
    assert_int_equal(put(s, 1, 10), MT_OK);
    mt_txn *t = NULL;
    assert_int_equal(mt_store_read_renew(s, &t), MT_OK); /* NULL: a new one */
    assert_non_null(t);
    const void *v;
    size_t n;
    assert_int_equal(get_key(t, 1, &v, &n), MT_OK);
    assert_int_equal(get_key(t, 2, &v, &n), MT_ENOTFOUND);
    mt_store_read_pause(t);
    assert_int_equal(put(s, 2, 20), MT_OK);
    mt_txn *same = t;
    assert_int_equal(mt_store_read_renew(s, &t), MT_OK);
    assert_ptr_equal(t, same);
    assert_int_equal(get_key(t, 2, &v, &n), MT_OK);
    assert_int_equal(n, 20);
    mt_store_read_pause(t);
    mt_store_read_end(t); /* a paused one ends too */
    mt_store_close(s);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, mt_test_setup_dir, mt_test_teardown_dir)
    const struct CMUnitTest tests[] = {
        T(test_store_commits_while_a_checkpoint_is_held_at_each_stage),
        T(test_store_checkpoint_on_request_is_durable_even_when_idle),
        T(test_store_commits_start_a_checkpoint_after_the_interval),
        T(test_store_kill9_during_a_checkpoint_keeps_every_acknowledged_write),
        T(test_store_a_group_is_seen_and_finished_once_its_sync_is_done),
        T(test_store_a_failed_sync_fails_its_group_and_every_later_write),
        T(test_store_a_paused_read_renews_on_the_latest_state),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
