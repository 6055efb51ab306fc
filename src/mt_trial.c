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
#include "mt_mem.h"
#include "mt_trial.h"
#include "mt_util.h"

extern char **environ;

#define REPORT_MAX 4096    /* bytes of the child's standard error kept */
#define START_MARGIN_MS 1000 /* for the child to start before its handler's code runs */

struct mt_trial {
    pid_t pid;
    int fd;               /* read end of the child's standard error */
    struct event *ev;
    int64_t deadline_us;  /* when the child is killed */
    uint64_t limit_ms;
    mt_buf report;
    mt_trial_done_fn done;
    void *arg;
};

static void trial_free(mt_trial *t)
{
    event_free(t->ev);
    close(t->fd);
    mt_buf_free(&t->report);
    free(t);
}

static void reap(pid_t pid, int *status)
{
    while (waitpid(pid, status, 0) < 0 && errno == EINTR) {
    }
}

/* Waits for the child, whose report is read or who is killed, and tells 'done'. */
static void finish(mt_trial *t, bool kill_it)
{
    if (kill_it) {
        kill(t->pid, SIGKILL);
    }
    int status = 0;
    reap(t->pid, &status);
    while (t->report.len > 0 && t->report.data[t->report.len - 1] == '\n') {
        t->report.len--;
    }
    const char *report = mt_buf_cstr(&t->report);
    mt_buf msg;
    mt_buf_init(&msg);
    mt_err rc = MT_ELUA;
    if (kill_it) {
        mt_buf_addf(&msg, "its top-level code ran past limits.time (%" PRIu64 " ms) and was "
                    "stopped: a string function stuck backtracking?", t->limit_ms);
    } else if (WIFEXITED(status) && WEXITSTATUS(status) == MT_EXIT_OK) {
        rc = MT_OK;
    } else if (WIFEXITED(status) && WEXITSTATUS(status) == MT_EXIT_CONFIG && report[0]) {
        mt_buf_adds(&msg, report);
    } else {
        rc = MT_EIO;
        if (WIFEXITED(status)) {
            mt_buf_addf(&msg, "the trial load ended with status %d", WEXITSTATUS(status));
        } else {
            mt_buf_addf(&msg, "the trial load ended by signal %d", WTERMSIG(status));
        }
        if (report[0]) {
            mt_buf_addf(&msg, ": %s", report);
        }
    }
    t->done(rc, mt_buf_cstr(&msg), t->arg);
    mt_buf_free(&msg);
    trial_free(t);
}

static void on_child(evutil_socket_t fd, short what, void *arg)
{
    mt_trial *t = arg;
    int64_t left_us = t->deadline_us - mt_now_us();
    if (what & EV_READ) {
        char buf[1024];
        ssize_t n = read(fd, buf, sizeof buf);
        if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) {
            finish(t, false); /* the child closed its standard error: it is ending */
            return;
        }
        if (n > 0 && t->report.len < REPORT_MAX) {
            size_t room = REPORT_MAX - t->report.len;
            mt_buf_add(&t->report, buf, (size_t) n < room ? (size_t) n : room);
        }
    }
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
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) {
        snprintf(err, errlen, "cannot make a pipe: %s", strerror(errno));
        return MT_EIO;
    }
    char instructions[24], memory[24];
    snprintf(instructions, sizeof instructions, "%" PRIu64, conf->max_instructions);
    snprintf(memory, sizeof memory, "%" PRIu64, conf->max_memory);
    char *argv[] = {"moontide", "check", "--handler", conf->handler, "--instructions",
                    instructions, "--memory", memory, NULL};
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
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &dfl);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    pid_t pid;
    int rc = posix_spawn(&pid, "/proc/self/exe", &fa, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    close(p[1]);
    if (rc) {
        close(p[0]);
        snprintf(err, errlen, "cannot run /proc/self/exe: %s", strerror(rc));
        return MT_EIO;
    }
    fcntl(p[0], F_SETFL, fcntl(p[0], F_GETFL) | O_NONBLOCK);
    mt_trial *t = mt_xcalloc(1, sizeof *t);
    t->pid = pid;
    t->fd = p[0];
    t->limit_ms = conf->max_time_ms;
    t->deadline_us = mt_now_us() + (int64_t) (conf->max_time_ms + START_MARGIN_MS) * 1000;
    mt_buf_init(&t->report);
    t->done = done;
    t->arg = arg;
    t->ev = event_new(mt_loop_base(loop), p[0], EV_READ, on_child, t);
    on_child(p[0], 0, t); /* arms the event with the time left */
    *out = t;
    return MT_OK;
}

void mt_trial_cancel(mt_trial *t)
{
    if (!t) {
        return;
    }
    kill(t->pid, SIGKILL);
    int status;
    reap(t->pid, &status);
    trial_free(t);
}
