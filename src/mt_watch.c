/*
 * mt_watch.c - the watchdog of handler runs (mt_watch.h).
 *
 * Each thread that runs handlers gets a slot on its first run, and gives
 * it back when it ends (mt_watch_forget). A run costs its thread plain stores and one
 * exchange: 'state' counts the runs begun and ended (odd while one is in
 * progress), published with release after the other fields. The watchdog
 * reads them four times a second. Before it reads the name and the event
 * (alive only while the run is), it claims the run: a compare-and-swap
 * sets CLAIMED on the state it saw, under the slot's mutex. A run that ends
 * after that finds the bit in mt_watch_leave and waits on the mutex, which
 * the watchdog holds until the process ends; one that ended before makes
 * the swap fail. Per run of the fan-out handler benchmark (callgrind,
 * 15,560 instructions without the watchdog): a mutex cost 256, this 48.
 */
#include "mt_watch.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "mt_diag.h"
#include "mt_util.h"

#define TICK_MS 250

#define CLAIMED (UINT64_C(1) << 63)

typedef struct slot {
    pthread_mutex_t mu;           /* held by the watchdog while it reads a claimed run */
    _Atomic uint64_t state;       /* runs begun + runs ended: odd while one is in progress */
    _Atomic(const char *) sub;    /* valid while the run is in progress */
    _Atomic(const mt_event *) ev; /* likewise; NULL while loading a handler file */
    _Atomic(const char *) file;   /* the file loading, while ev is NULL */
    _Atomic uint64_t limit_ms;
    _Atomic uint32_t attempt;
    bool taken;      /* a thread has it (under W.mu) */
    uint64_t seen;   /* the watchdog's: the state it saw last ... */
    int64_t seen_us; /* ... and when it first saw it (monotonic) */
    struct slot *next;
} slot;

typedef struct note {
    char *sub;    /* owned */
    char *file;   /* owned: the handler file whose loading got stuck, or NULL */
    char *source; /* owned: else the event's source ... */
    char *id;     /* owned: ... and id */
    uint64_t seq;
    uint32_t attempt;
    uint64_t limit_ms;
} note;

static struct {
    pthread_mutex_t mu; /* slots, notes, stop */
    pthread_cond_t cv;
    slot *slots;
    note *notes;
    int nnotes;
    char *dir; /* owned */
    bool stop;
    pthread_t thread;
} W = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, NULL, 0, NULL, false, 0};

static atomic_bool watching; /* mt_watch_start ran */
static atomic_int pending;   /* W.nnotes, read without the mutex */
static __thread slot *mine;

static void *thread_main(void *arg);

static void notes_add(const char *sub, const char *file, const char *source, const char *id,
                      uint64_t seq, uint32_t attempt, uint64_t limit_ms)
{
    W.notes = mt_xrealloc(W.notes, (size_t) (W.nnotes + 1) * sizeof *W.notes);
    W.notes[W.nnotes++] = (note){mt_xstrdup(sub),
                                 file ? mt_xstrdup(file) : NULL,
                                 mt_xstrdup(source),
                                 mt_xstrdup(id),
                                 seq,
                                 attempt,
                                 limit_ms};
    atomic_store(&pending, W.nnotes);
}

static void notes_free(void)
{
    for (int i = 0; i < W.nnotes; i++) {
        free(W.notes[i].sub);
        free(W.notes[i].file);
        free(W.notes[i].source);
        free(W.notes[i].id);
    }
    free(W.notes);
    W.notes = NULL;
    W.nnotes = 0;
    atomic_store(&pending, 0);
}

/* Reads what the last process wrote; its notes join W.notes. */
static mt_err load_notes(const char *path, char *err, size_t errlen)
{
    struct stat st;
    if (stat(path, &st) != 0 && errno == ENOENT) {
        return MT_OK;
    }
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s is not a regular file; remove it to start", path);
        return MT_EINVAL;
    }
    json_error_t je;
    json_t *a = json_load_file(path, 0, &je);
    if (!a) {
        snprintf(err, errlen,
                 "%s:%d: %s; remove it to start (its handlers would then run those events "
                 "again)",
                 path, je.line, je.text);
        return MT_EINVAL;
    }
    size_t i;
    json_t *n;
    mt_err rc = json_is_array(a) ? MT_OK : MT_EINVAL;
    json_array_foreach(a, i, n)
    {
        json_t *sub = json_object_get(n, "subscription"), *seq = json_object_get(n, "sequence");
        json_t *src = json_object_get(n, "source"), *id = json_object_get(n, "id");
        json_t *att = json_object_get(n, "attempt"), *lim = json_object_get(n, "limit_ms");
        json_t *file = json_object_get(n, "file");
        if (!json_is_string(sub) || !json_is_string(src) || !json_is_string(id) ||
            !json_is_integer(seq) || !json_is_integer(att) || !json_is_integer(lim) ||
            (file && !json_is_string(file))) {
            rc = MT_EINVAL;
            break;
        }
        notes_add(json_string_value(sub), json_string_value(file), json_string_value(src),
                  json_string_value(id), (uint64_t) json_integer_value(seq),
                  (uint32_t) json_integer_value(att), (uint64_t) json_integer_value(lim));
    }
    json_decref(a);
    if (rc) {
        notes_free();
        snprintf(err, errlen,
                 "%s: not a list of {subscription, [file], sequence, source, id, attempt, "
                 "limit_ms}; remove it to start (its handlers would then run those events again)",
                 path);
    }
    return rc;
}

mt_err mt_watch_start(const char *dir, char *err, size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, MT_WATCH_FILE);
    pthread_mutex_lock(&W.mu);
    mt_err rc = load_notes(path, err, errlen);
    pthread_mutex_unlock(&W.mu);
    if (rc) {
        return rc;
    }
    if (unlink(path) != 0 && errno != ENOENT) {
        snprintf(err, errlen, "%s: cannot remove it: %s", path, strerror(errno));
        pthread_mutex_lock(&W.mu);
        notes_free();
        pthread_mutex_unlock(&W.mu);
        return MT_EIO;
    }
    for (int i = 0; i < W.nnotes; i++) {
        const note *n = &W.notes[i];
        if (n->file) {
            continue; /* the handler's loading says why it fails (mt_watch_take_load) */
        }
        const char *fields[] = {"subscription", n->sub, "source", n->source, "id", n->id, NULL};
        mt_diag_emit(MT_DIAG_WARN, fields,
                     "the handler of subscription '%s' got stuck on the event with source "
                     "'%s' and id '%s' before the restart: that message goes to the "
                     "dead-letter queue without running it",
                     n->sub, n->source, n->id);
    }
    W.dir = mt_xstrdup(dir);
    W.stop = false;
    atomic_store(&watching, true);
    if (pthread_create(&W.thread, NULL, thread_main, NULL) != 0) {
        atomic_store(&watching, false);
        pthread_mutex_lock(&W.mu);
        notes_free();
        free(W.dir);
        W.dir = NULL;
        pthread_mutex_unlock(&W.mu);
        snprintf(err, errlen, "cannot start the watchdog thread");
        return MT_ENOMEM;
    }
    return MT_OK;
}

void mt_watch_stop(void)
{
    if (!atomic_load(&watching)) {
        return;
    }
    pthread_mutex_lock(&W.mu);
    W.stop = true;
    pthread_cond_signal(&W.cv);
    pthread_mutex_unlock(&W.mu);
    pthread_join(W.thread, NULL);
    atomic_store(&watching, false);
    pthread_mutex_lock(&W.mu);
    for (slot *s = W.slots, *next; s; s = next) {
        next = s->next;
        pthread_mutex_destroy(&s->mu);
        free(s);
    }
    W.slots = NULL;
    notes_free();
    free(W.dir);
    W.dir = NULL;
    pthread_mutex_unlock(&W.mu);
    mine = NULL;
}

/* Either ev or file is NULL. */
static void enter(const char *sub, const mt_event *ev, const char *file, uint32_t attempt,
                  uint64_t limit_ms)
{
    if (!atomic_load_explicit(&watching, memory_order_relaxed)) {
        return;
    }
    if (!mine) {
        pthread_mutex_lock(&W.mu);
        slot *s = W.slots;
        while (s && s->taken) {
            s = s->next;
        }
        if (!s) {
            s = mt_xcalloc(1, sizeof *s);
            pthread_mutex_init(&s->mu, NULL);
            s->next = W.slots;
            W.slots = s;
        }
        s->taken = true;
        pthread_mutex_unlock(&W.mu);
        mine = s;
    }
    atomic_store_explicit(&mine->sub, sub, memory_order_relaxed);
    atomic_store_explicit(&mine->ev, ev, memory_order_relaxed);
    atomic_store_explicit(&mine->file, file, memory_order_relaxed);
    atomic_store_explicit(&mine->attempt, attempt, memory_order_relaxed);
    atomic_store_explicit(&mine->limit_ms, limit_ms, memory_order_relaxed);
    uint64_t st = atomic_load_explicit(&mine->state, memory_order_relaxed);
    atomic_store_explicit(&mine->state, st + 1, memory_order_release);
}

void mt_watch_enter(const char *sub, const mt_event *ev, uint32_t attempt, uint64_t limit_ms)
{
    enter(sub, ev, NULL, attempt, limit_ms);
}

void mt_watch_enter_load(const char *sub, const char *file, uint64_t limit_ms)
{
    enter(sub, NULL, file, 0, limit_ms);
}

void mt_watch_leave(void)
{
    if (!mine) {
        return;
    }
    uint64_t st = atomic_load_explicit(&mine->state, memory_order_relaxed);
    st = atomic_exchange_explicit(&mine->state, (st & ~CLAIMED) + 1, memory_order_acq_rel);
    if (st & CLAIMED) {
        /* The watchdog is reading this run and ends the process: wait for it. */
        pthread_mutex_lock(&mine->mu);
        pthread_mutex_unlock(&mine->mu);
    }
}

static void drop_note(int i)
{
    free(W.notes[i].sub);
    free(W.notes[i].file);
    free(W.notes[i].source);
    free(W.notes[i].id);
    W.notes[i] = W.notes[--W.nnotes];
    atomic_store(&pending, W.nnotes);
}

static const char *attr(const mt_event *ev, int a)
{
    return ev->attr[a] ? ev->attr[a] : "";
}

/* The note of 'sub' on 'ev' (-1 if none). */
void mt_watch_forget(void)
{
    if (mine && atomic_load(&watching)) {
        pthread_mutex_lock(&W.mu);
        mine->taken = false;
        pthread_mutex_unlock(&W.mu);
    }
    mine = NULL;
}

static int find_note(const char *sub, const mt_event *ev)
{
    for (int i = 0; i < W.nnotes; i++) {
        const note *n = &W.notes[i];
        if (!n->file && strcmp(n->id, attr(ev, MT_ATTR_ID)) == 0 &&
            strcmp(n->source, attr(ev, MT_ATTR_SOURCE)) == 0 && strcmp(n->sub, sub) == 0) {
            return i;
        }
    }
    return -1;
}

bool mt_watch_take(const char *sub, const mt_event *ev, mt_buf *why)
{
    if (atomic_load_explicit(&pending, memory_order_relaxed) == 0) {
        return false;
    }
    pthread_mutex_lock(&W.mu);
    int i = find_note(sub, ev);
    if (i >= 0) {
        note n = W.notes[i];
        if (why) {
            mt_buf_addf(why,
                        "the handler ran longer than limits.time (%llu ms) on attempt %u "
                        "without returning, stuck in a C function (string.find with a "
                        "pattern that backtracks, say); the engine restarted and sent the "
                        "message here without running it again",
                        (unsigned long long) n.limit_ms, n.attempt);
        }
        drop_note(i);
    }
    pthread_mutex_unlock(&W.mu);
    return i >= 0;
}

bool mt_watch_take_load(const char *sub, mt_buf *why)
{
    if (atomic_load_explicit(&pending, memory_order_relaxed) == 0) {
        return false;
    }
    pthread_mutex_lock(&W.mu);
    int i = 0;
    while (i < W.nnotes && !(W.notes[i].file && strcmp(W.notes[i].sub, sub) == 0)) {
        i++;
    }
    bool found = i < W.nnotes;
    if (found) {
        mt_buf_addf(why,
                    "loading %s took longer than limits.time (%llu ms) before the restart: its "
                    "top-level code got stuck in a C function (string.find with a pattern "
                    "that backtracks, say). Not loaded this once: fix the file and load it again",
                    W.notes[i].file, (unsigned long long) W.notes[i].limit_ms);
        drop_note(i);
    }
    pthread_mutex_unlock(&W.mu);
    return found;
}

bool mt_watch_noted(const char *sub, const mt_event *ev)
{
    if (atomic_load_explicit(&pending, memory_order_relaxed) == 0) {
        return false;
    }
    pthread_mutex_lock(&W.mu);
    bool found = find_note(sub, ev) >= 0;
    pthread_mutex_unlock(&W.mu);
    return found;
}

/* Writes every note to DIR/stuck.json durably (a new file, then renamed). */
static bool write_notes(void)
{
    json_t *a = json_array();
    for (int i = 0; i < W.nnotes; i++) {
        json_t *n = json_object();
        json_object_set_new(n, "subscription", json_string(W.notes[i].sub));
        if (W.notes[i].file) {
            json_object_set_new(n, "file", json_string(W.notes[i].file));
        }
        json_object_set_new(n, "sequence", json_integer((json_int_t) W.notes[i].seq));
        json_object_set_new(n, "source", json_string(W.notes[i].source));
        json_object_set_new(n, "id", json_string(W.notes[i].id));
        json_object_set_new(n, "attempt", json_integer(W.notes[i].attempt));
        json_object_set_new(n, "limit_ms", json_integer((json_int_t) W.notes[i].limit_ms));
        json_array_append_new(a, n);
    }
    char *text = json_dumps(a, JSON_INDENT(2));
    json_decref(a);
    char tmp[4096], path[4096];
    snprintf(tmp, sizeof tmp, "%s/%s.new", W.dir, MT_WATCH_FILE);
    snprintf(path, sizeof path, "%s/%s", W.dir, MT_WATCH_FILE);
    bool ok = false;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0 && text) {
        size_t len = strlen(text);
        ok = write(fd, text, len) == (ssize_t) len && fsync(fd) == 0;
    }
    if (fd >= 0) {
        close(fd);
    }
    free(text);
    ok = ok && rename(tmp, path) == 0;
    return mt_sync_dir(W.dir) && ok;
}

/* Called with W.mu held: notes and logs every run past its limit; true if there was one. */
static bool look(int64_t now)
{
    bool stuck = false;
    for (slot *s = W.slots; s; s = s->next) {
        uint64_t st = atomic_load_explicit(&s->state, memory_order_acquire);
        if (!(st & 1)) {
            continue;
        }
        if (s->seen != st) {
            s->seen = st;
            s->seen_us = now;
            continue;
        }
        uint64_t limit_ms = atomic_load_explicit(&s->limit_ms, memory_order_relaxed);
        if (now - s->seen_us < (int64_t) limit_ms * 1000) {
            continue;
        }
        /* It began before it was first seen: it has run at least this long. */
        pthread_mutex_lock(&s->mu); /* not unlocked: the process ends (thread_main) */
        if (!atomic_compare_exchange_strong(&s->state, &st, st | CLAIMED)) {
            pthread_mutex_unlock(&s->mu); /* it just returned */
            continue;
        }
        stuck = true;
        const char *sub = atomic_load_explicit(&s->sub, memory_order_relaxed);
        const mt_event *ev = atomic_load_explicit(&s->ev, memory_order_relaxed);
        const char *file = atomic_load_explicit(&s->file, memory_order_relaxed);
        char ms[24];
        snprintf(ms, sizeof ms, "%llu", (unsigned long long) limit_ms);
        if (!ev) {
            const char *fields[] = {"subscription", sub, "file", file, "limit_ms", ms, NULL};
            mt_diag_emit(MT_DIAG_ERROR, fields,
                         "loading the handler of subscription '%s' (%s) has taken longer than "
                         "limits.time (%s ms): its top-level code is stuck in a C function, "
                         "which nothing can interrupt. The engine stops now (exit status %d); "
                         "the next start refuses to load that file once",
                         sub, file, ms, MT_WATCH_EXIT);
            notes_add(sub, file, "", "", 0, 0, limit_ms);
            continue;
        }
        {
            uint32_t attempt = atomic_load_explicit(&s->attempt, memory_order_relaxed);
            char seq[24];
            snprintf(seq, sizeof seq, "%llu", (unsigned long long) ev->sequence);
            const char *fields[] = {"subscription", sub, "sequence", seq, "limit_ms", ms, NULL};
            mt_diag_emit(MT_DIAG_ERROR, fields,
                         "the handler of subscription '%s' has run on event %s longer than "
                         "limits.time (%s ms) without returning: it is stuck in a C function "
                         "(string.find with a pattern that backtracks, say), which nothing "
                         "can interrupt. The engine stops now (exit status %d); start it "
                         "again and that message goes to the dead-letter queue",
                         sub, seq, ms, MT_WATCH_EXIT);
            if (find_note(sub, ev) < 0) {
                notes_add(sub, NULL, attr(ev, MT_ATTR_SOURCE), attr(ev, MT_ATTR_ID), ev->sequence,
                          attempt, limit_ms);
            }
        }
    }
    return stuck;
}

static void *thread_main(void *arg)
{
    (void) arg;
    pthread_setname_np(pthread_self(), "watchdog");
    pthread_mutex_lock(&W.mu);
    while (!W.stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += TICK_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&W.cv, &W.mu, &ts);
        if (!W.stop && look(mt_mono_us())) {
            if (!write_notes()) {
                mt_error("cannot write %s/%s: after the restart the handler will run on "
                         "that event again",
                         W.dir, MT_WATCH_FILE);
            }
            _exit(MT_WATCH_EXIT);
        }
    }
    pthread_mutex_unlock(&W.mu);
    return NULL;
}
