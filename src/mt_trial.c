/*
 * mt_trial.c - loading a handler first in a process of its own (mt_trial.h).
 */
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mt_client.h"
#include "mt_lua.h"
#include "mt_mem.h"
#include "mt_trial.h"
#include "mt_util.h"

extern char **environ;

#define REPORT_MAX 4096      /* bytes of the child's standard error kept: the last ones */
#define START_MARGIN_MS 1000 /* for the child to start before its handler's code runs */
#define MAX_TRIES 3          /* loads tried again because the file changed meanwhile */

struct mt_trial {
    mt_loop *loop;
    char *handler;
    uint64_t instructions, memory, limit_ms;
    char *src;            /* the file's bytes when the child was started, or NULL */
    size_t src_len;
    int tries;
    pid_t pid;
    int fd;               /* read end of the child's standard error */
    struct event *ev;
    int64_t deadline_us;  /* on mt_mono_us(): when the child is killed */
    mt_buf report;
    mt_trial_done_fn done;
    void *arg;
};

/* The file's bytes as the engine's load would take them, or NULL (mt_lua_read_source). */
static char *read_source(const char *path, size_t *len)
{
    char *b, err[300];
    return mt_lua_read_source(path, &b, len, err, sizeof err) == MT_OK ? b : NULL;
}

/* Ends the child (if it runs) and lets go of what watches it. */
static int child_end(mt_trial *t, bool kill_it)
{
    if (kill_it) {
        kill(t->pid, SIGKILL);
    }
    int status;
    pid_t got;
    while ((got = waitpid(t->pid, &status, 0)) < 0 && errno == EINTR) {
    }
    event_free(t->ev);
    t->ev = NULL;
    close(t->fd);
    t->fd = -1;
    return got == t->pid ? status : -1;
}

static void trial_free(mt_trial *t)
{
    if (t->ev) {
        child_end(t, true);
    }
    mt_buf_free(&t->report);
    free(t->src);
    free(t->handler);
    free(t);
}

static void on_child(evutil_socket_t fd, short what, void *arg);

/* Starts the child on the file as it now is. MT_EIO with the reason in 'err' if it cannot. */
static mt_err spawn(mt_trial *t, char *err, size_t errlen)
{
    free(t->src);
    t->src = read_source(t->handler, &t->src_len);
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) {
        snprintf(err, errlen, "cannot make a pipe: %s", strerror(errno));
        return MT_EIO;
    }
    char instructions[24], memory[24], time[24];
    snprintf(instructions, sizeof instructions, "%" PRIu64, t->instructions);
    snprintf(memory, sizeof memory, "%" PRIu64, t->memory);
    snprintf(time, sizeof time, "%" PRIu64 "ms", t->limit_ms);
    char *argv[] = {"moontide", "check", "--handler", t->handler, "--instructions",
                    instructions, "--memory", memory, "--time", time, NULL};
    /* Only the pipe is passed on: a child held up must not hold the engine's sockets open. */
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, p[1], 2);
    posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    posix_spawnattr_init(&attr);
    sigset_t none, dfl;
    sigemptyset(&none);
    sigemptyset(&dfl);
    sigaddset(&dfl, SIGPIPE);
    sigaddset(&dfl, SIGHUP);
    sigaddset(&dfl, SIGALRM);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &dfl);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    /* Which process the child is to die with (check_handler in moontide.c). */
    size_t nenv = 0;
    while (environ[nenv]) {
        nenv++;
    }
    char **envp = mt_xcalloc(nenv + 2, sizeof *envp);
    char parent[48];
    snprintf(parent, sizeof parent, "MOONTIDE_TRIAL_PARENT=%ld", (long) getpid());
    size_t k = 0;
    for (size_t i = 0; i < nenv; i++) {
        if (strncmp(environ[i], "MOONTIDE_TRIAL_PARENT=", 22) != 0) {
            envp[k++] = environ[i];
        }
    }
    envp[k] = parent;
    int rc = posix_spawn(&t->pid, "/proc/self/exe", &fa, &attr, argv, envp);
    free(envp);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    close(p[1]);
    if (rc) {
        close(p[0]);
        snprintf(err, errlen, "cannot start /proc/self/exe: %s", strerror(rc));
        return MT_EIO;
    }
    fcntl(p[0], F_SETFL, fcntl(p[0], F_GETFL) | O_NONBLOCK);
    t->fd = p[0];
    t->report.len = 0;
    uint64_t span_ms = t->limit_ms + START_MARGIN_MS;
    t->deadline_us = mt_mono_us() + (int64_t) span_ms * 1000;
    t->ev = event_new(mt_loop_base(t->loop), p[0], EV_READ, on_child, t);
    struct timeval tv = {(time_t) (span_ms / 1000), (suseconds_t) (span_ms % 1000) * 1000};
    event_add(t->ev, &tv);
    return MT_OK;
}

/* The child ended (or is killed): what it says of the handler goes to 'done'. */
static void finish(mt_trial *t, bool kill_it)
{
    int status = child_end(t, kill_it);
    while (t->report.len > 0 && t->report.data[t->report.len - 1] == '\n') {
        t->report.len--;
    }
    const char *report = mt_buf_cstr(&t->report);
    mt_buf msg;
    mt_buf_init(&msg);
    mt_err rc = MT_ELUA;
    int code = status >= 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    if (kill_it) {
        mt_buf_addf(&msg, "%s: its top-level code ran past its time limit (%" PRIu64 " ms) and "
                    "was stopped: a string function stuck backtracking?", t->handler,
                    t->limit_ms);
    } else if (code == MT_EXIT_OK) {
        size_t now_len;
        char *now = read_source(t->handler, &now_len);
        bool same = now && t->src && now_len == t->src_len && memcmp(now, t->src, now_len) == 0;
        free(now);
        if (!same && ++t->tries < MAX_TRIES) {
            char err[300];
            if (spawn(t, err, sizeof err) == MT_OK) {
                mt_buf_free(&msg);
                return; /* tried again on the file as it now is */
            }
            rc = MT_EUNAVAIL;
            mt_buf_addf(&msg, "%s changed while it was tried, and %s", t->handler, err);
        } else if (!same) {
            mt_buf_addf(&msg, "%s changed each time it was tried (%d times), or is no longer a "
                        "regular file of at most %zu bytes; send SIGHUP again once it is saved",
                        t->handler, MAX_TRIES, MT_LUA_MAX_SOURCE);
        } else {
            rc = MT_OK;
        }
    } else if (code == MT_EXIT_CONFIG) {
        if (report[0]) {
            mt_buf_adds(&msg, report);
        } else {
            mt_buf_addf(&msg, "%s: did not load, with an empty error message", t->handler);
        }
    } else if (code >= 0) {
        /* Not a verdict of `check --handler`: the binary is not moontide (a loader,
         * valgrind), or one too old to have the option. */
        rc = MT_EUNAVAIL;
        mt_buf_addf(&msg, "/proc/self/exe check --handler %s ended with status %d%s%s",
                    t->handler, code, report[0] ? ": " : "", report);
    } else {
        rc = MT_EIO;
        if (status < 0) {
            mt_buf_addf(&msg, "the trial load of %s ended, how is not known", t->handler);
        } else {
            mt_buf_addf(&msg, "the trial load of %s ended by signal %d%s%s", t->handler,
                        WTERMSIG(status), report[0] ? ": " : "", report);
        }
    }
    t->done(rc, mt_buf_cstr(&msg), rc == MT_OK ? t->src : NULL, t->src_len, t->arg);
    mt_buf_free(&msg);
    trial_free(t);
}

/* Keeps the last REPORT_MAX bytes (n is less): the reason a load failed is written last. */
static void keep_tail(mt_buf *b, const char *s, size_t n)
{
    if (b->len + n > REPORT_MAX) {
        size_t drop = b->len + n - REPORT_MAX;
        memmove(b->data, b->data + drop, b->len - drop);
        b->len -= drop;
    }
    mt_buf_add(b, s, n);
}

static void on_child(evutil_socket_t fd, short what, void *arg)
{
    mt_trial *t = arg;
    if (what & EV_READ) {
        char buf[1024];
        ssize_t n = read(fd, buf, sizeof buf);
        if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) {
            finish(t, false); /* the child closed its standard error: it is ending */
            return;
        }
        if (n > 0) {
            for (ssize_t i = 0; i < n; i++) {
                buf[i] = buf[i] ? buf[i] : ' '; /* the report is read as a C string */
            }
            keep_tail(&t->report, buf, (size_t) n);
        }
    }
    int64_t left_us = t->deadline_us - mt_mono_us();
    if (left_us <= 0) {
        finish(t, true);
        return;
    }
    struct timeval tv = {(time_t) (left_us / 1000000), (suseconds_t) (left_us % 1000000)};
    event_add(t->ev, &tv);
}

mt_err mt_trial_start(mt_loop *loop, const mt_sub_conf *conf, mt_trial_done_fn done, void *arg,
                      mt_trial **out, char *err, size_t errlen)
{
    *out = NULL;
    mt_trial *t = mt_xcalloc(1, sizeof *t);
    *t = (mt_trial){.loop = loop, .handler = mt_xstrdup(conf->handler),
                    .instructions = conf->max_instructions, .memory = conf->max_memory,
                    .limit_ms = conf->max_time_ms, .fd = -1, .done = done, .arg = arg};
    mt_buf_init(&t->report);
    if (spawn(t, err, errlen) != MT_OK) {
        trial_free(t);
        return MT_EIO;
    }
    *out = t;
    return MT_OK;
}

void mt_trial_cancel(mt_trial *t)
{
    if (t) {
        trial_free(t);
    }
}
