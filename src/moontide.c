/*
 * moontide.c - main() and the command line: run, check, publish, read, tail.
 * Wiring only: each command's work lives in its module.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <unistd.h>
#include "moontide.h"
#include "mt_client.h"
#include "mt_datacache.h"
#include "mt_diag.h"
#include "mt_http.h"
#include "mt_loop.h"
#include "mt_lua.h"
#include "mt_lua_handler.h"
#include "mt_mem.h"
#include "mt_store.h"
#include "mt_sub.h"
#include "mt_topo.h"
#include "mt_util.h"
#include "mt_watch.h"
#include "mt_webhook.h"


static const char usage_main[] =
    "usage: moontide COMMAND [OPTIONS]\n"
    "\n"
    "moontide is an event engine: a durable CloudEvents log served over HTTP.\n"
    "\n"
    "commands:\n"
    "  run       run the engine (HTTP API on engine.listen)\n"
    "  check     validate a topology file and report every error\n"
    "  publish   publish events to a running engine\n"
    "  read      read the log or one stream from a running engine\n"
    "  tail      follow the log of a running engine\n"
    "  dlq       list, show, redrive or purge a subscription's dead letters\n"
    "\n"
    "options:\n"
    "  -h, --help      show this help (or COMMAND --help for a command's)\n"
    "  -V, --version   print the version\n"
    "\n"
    "exit codes: 0 ok, 64 usage, 65 bad data, 69 unavailable, 70 internal,\n"
    "74 storage i/o error, 78 bad configuration\n";

static const char usage_run[] =
    "usage: moontide run [-c FILE] [--data-dir DIR] [--listen HOST:PORT]\n"
    "\n"
    "Runs the engine with the topology in FILE (default " MT_DEFAULT_CONFIG ").\n"
    "  -c, --config FILE     topology file\n"
    "      --data-dir DIR    overrides engine.data_dir\n"
    "      --listen H:P      overrides engine.listen (port 0 picks a free port)\n"
    "SIGTERM or SIGINT drains: accepted events are committed and answered, then exit 0.\n"
    "SIGHUP loads every handler again from its file (a handler that does not compile\n"
    "is logged and keeps its running code); the topology file is read only at start.\n";

static const char usage_check[] =
    "usage: moontide check [-c FILE | FILE]\n"
    "       moontide check --handler FILE [--instructions N] [--memory SIZE] [--time D]\n"
    "\n"
    "Validates a topology file and prints every error as FILE:LINE:COL: error: message.\n"
    "Compiles every handler with the rest of the file; then, if all is well, loads\n"
    "each one as `run` does (its top-level code runs under the subscription's limits).\n"
    "With --handler, loads that one handler file so, under the limits given (default\n"
    "10000000 instructions, 16MiB, no time limit), and prints why it does not load as\n"
    "FILE:LINE: message.\n"
    "Exits 0 if valid, 78 if not.\n";

/* Prints every error line and returns the exit code for a failed load. */
static int report_topo_errors(mt_err rc, mt_topo_errs *errs)
{
    for (int i = 0; i < errs->count; i++) {
        fprintf(stderr, "%s\n", errs->lines[i]);
    }
    mt_topo_errs_free(errs);
    (void) rc;
    return MT_EXIT_CONFIG;
}

static bool compile_handler(const char *path, char *err, size_t errlen)
{
    return mt_lua_check_file(path, err, errlen) == MT_OK;
}

/* What a check past --time says, composed before the load: a signal handler may only write it. */
static char check_late[600];
static size_t check_late_len;

static void on_check_late(int sig)
{
    (void) sig;
    ssize_t n = write(STDERR_FILENO, check_late, check_late_len);
    (void) n;
    _exit(MT_EXIT_CONFIG);
}

/*
 * `moontide check --handler FILE`: loads one handler file as `run` does,
 * under 'conf''s limits; a reload tries each handler so first (mt_trial.h). Only
 * warnings and errors are logged, so that the reason a load failed is the
 * last thing written. Past 'time_ms' (0: no limit) the check ends itself,
 * even from inside one C function; and it ends with its parent, so one an
 * engine started for a reload cannot outlive the engine.
 */
static int check_handler(const mt_sub_conf *conf, uint64_t time_ms)
{
    mt_diag_set_level(MT_DIAG_WARN);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    /* An engine's trial (mt_trial.c) whose engine died before the line above is an orphan. */
    const char *parent = getenv("MOONTIDE_TRIAL_PARENT");
    if (parent && strtol(parent, NULL, 10) != (long) getppid()) {
        _exit(MT_EXIT_SOFTWARE);
    }
    if (time_ms) {
        int n = snprintf(check_late, sizeof check_late, "%s: its top-level code ran past its time "
                         "limit (%" PRIu64 " ms) and was stopped: a string function stuck "
                         "backtracking?\n", conf->handler, time_ms);
        check_late_len = n < 0 ? 0 : (size_t) n < sizeof check_late ? (size_t) n
                                                                     : sizeof check_late - 1;
        struct sigaction sa = {.sa_handler = on_check_late};
        sigaction(SIGALRM, &sa, NULL);
        struct itimerval it = {.it_value = {(time_t) (time_ms / 1000),
                                            (suseconds_t) (time_ms % 1000) * 1000}};
        setitimer(ITIMER_REAL, &it, NULL);
    }
    char err[1024];
    void *h;
    const mt_sub_runner *lua = mt_lua_sub_runner();
    mt_err rc = lua->open(conf, &h, err, sizeof err);
    if (time_ms) {
        setitimer(ITIMER_REAL, &(struct itimerval){0}, NULL);
    }
    if (rc) {
        fprintf(stderr, "%s\n", err);
        return MT_EXIT_CONFIG;
    }
    lua->close(h);
    printf("%s: ok\n", conf->handler);
    return MT_EXIT_OK;
}

static int cmd_check(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"handler", required_argument, NULL, 'H'},
        {"instructions", required_argument, NULL, 'I'},
        {"memory", required_argument, NULL, 'M'},
        {"time", required_argument, NULL, 'T'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *path = MT_DEFAULT_CONFIG;
    bool given = false;
    mt_sub_conf one = {.name = "check"};
    mt_sub_conf_defaults(&one);
    bool limits = false;
    uint64_t time_ms = 0;
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            path = optarg;
            given = true;
            break;
        case 'H': one.handler = optarg; break;
        case 'I':
            limits = true;
            if (mt_parse_u64(optarg, &one.max_instructions) || one.max_instructions < 1000 ||
                one.max_instructions > 10000000000ULL) {
                fprintf(stderr, "moontide check: --instructions '%s' is not a whole number "
                        "from 1000 to 10000000000\n", optarg);
                return MT_EXIT_USAGE;
            }
            break;
        case 'M':
            limits = true;
            if (mt_parse_size(optarg, &one.max_memory) || one.max_memory < 256 * 1024 ||
                one.max_memory > 4ULL * 1024 * 1024 * 1024) {
                fprintf(stderr, "moontide check: --memory '%s' is not a size from 256KiB to "
                        "4GiB\n", optarg);
                return MT_EXIT_USAGE;
            }
            break;
        case 'T':
            limits = true;
            if (mt_parse_duration(optarg, &time_ms) || time_ms < 1 || time_ms > 3600 * 1000) {
                fprintf(stderr, "moontide check: --time '%s' is not a duration from 1ms to "
                        "1h\n", optarg);
                return MT_EXIT_USAGE;
            }
            break;
        case 'h': fputs(usage_check, stdout); return MT_EXIT_OK;
        default: fputs(usage_check, stderr); return MT_EXIT_USAGE;
        }
    }
    if (one.handler || limits) {
        if (!one.handler || given || optind < argc) {
            fprintf(stderr, "moontide check: --handler FILE checks one handler file, with "
                    "--instructions and --memory only\n");
            fputs(usage_check, stderr);
            return MT_EXIT_USAGE;
        }
        return check_handler(&one, time_ms);
    }
    if (optind < argc) {
        if (given || optind + 1 < argc) {
            fprintf(stderr, "moontide check: give one topology file, as -c FILE or as FILE\n");
            fputs(usage_check, stderr);
            return MT_EXIT_USAGE;
        }
        path = argv[optind];
    }
    mt_topo *t;
    mt_topo_errs errs = {0};
    mt_err rc = mt_topo_load_compiling(path, compile_handler, &t, &errs);
    if (rc) {
        return report_topo_errors(rc, &errs);
    }
    /* Compiled, each handler is now loaded as `run` loads it: its top-level
     * code runs, under the subscription's limits, and must return one. */
    int bad = 0;
    const mt_sub_runner *lua = mt_lua_sub_runner();
    for (int i = 0; i < t->nsubs; i++) {
        const mt_sub_conf *s = &t->subs[i];
        if (!s->handler) {
            continue; /* pull and webhook subscriptions run nothing here */
        }
        char err[1024];
        void *h;
        if (lua->open(s, &h, err, sizeof err)) {
            fprintf(stderr, "%s:%d:%d: error: 'subscriptions.%s.handler': %s\n", path,
                    s->handler_line, s->handler_col, s->name, err);
            bad++;
        } else {
            lua->close(h);
        }
    }
    mt_topo_free(t);
    if (bad) {
        return MT_EXIT_CONFIG;
    }
    printf("%s: ok\n", path);
    return MT_EXIT_OK;
}

/* A subscription was made, changed or deleted over HTTP: webhooks follow. */
static void on_sub_change(const char *name, const mt_sub_conf *conf, void *arg)
{
    mt_webhooks_update(arg, name, conf);
}

/* SIGHUP: handlers are loaded again from their files (a fix, then a redrive). */
static void on_reload(void *arg)
{
    mt_info("received SIGHUP: loading handlers again");
    mt_subs_reload(arg);
}

/* New events may be there: webhooks lease them at once. */
static void on_kick(void *arg)
{
    mt_webhooks_kick(arg);
}

/* Handlers appended events: wake long polls and every subscription. */
static void on_handler_append(void *arg)
{
    mt_http *http = arg;
    mt_http_appended(http);
}

/*
 * Every HTTP connection (an SSE stream, a long poll) holds a descriptor:
 * the soft limit (often 1024) goes up to the hard limit, as far as allowed.
 */
static void raise_open_files(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rlim_t want = rl.rlim_max;
        rl.rlim_cur = want;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
            mt_warn("cannot raise the open-file limit to %llu: %s", (unsigned long long) want,
                    strerror(errno));
        }
    }
}

static int cmd_run(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"data-dir", required_argument, NULL, 'd'},
        {"listen", required_argument, NULL, 'l'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    /*
     * A SIGHUP before the loop takes it (a reload sent while the store
     * opens and the handlers load) would end the process. It is held
     * blocked until then, and in every thread started meanwhile, so a
     * reload sent during the start is done once the engine serves: the
     * files may have changed after they were read.
     */
    sigset_t hup;
    sigemptyset(&hup);
    sigaddset(&hup, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &hup, NULL);
    /* A reload's trial loads are waited for (mt_trial.h): an inherited
     * SIG_IGN would reap them first and hide how they ended. */
    signal(SIGCHLD, SIG_DFL);
    const char *path = NULL, *data_dir = NULL, *listen = NULL;
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': path = optarg; break;
        case 'd': data_dir = optarg; break;
        case 'l': listen = optarg; break;
        case 'h': fputs(usage_run, stdout); return MT_EXIT_OK;
        default: fputs(usage_run, stderr); return MT_EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "moontide run: unexpected argument '%s'\n", argv[optind]);
        return MT_EXIT_USAGE;
    }
    if (data_dir && !*data_dir) {
        fprintf(stderr, "moontide run: --data-dir must not be empty\n");
        return MT_EXIT_USAGE;
    }
    mt_topo *topo;
    if (path || access(MT_DEFAULT_CONFIG, R_OK) == 0) {
        mt_topo_errs errs = {0};
        mt_err rc = mt_topo_load(path ? path : MT_DEFAULT_CONFIG, &topo, &errs);
        if (rc) {
            return report_topo_errors(rc, &errs);
        }
    } else {
        topo = mt_topo_new_default();
    }
    mt_engine_conf *e = &topo->engine;
    if (data_dir) {
        free(e->data_dir);
        e->data_dir = mt_xstrdup(data_dir);
    }
    if (listen) {
        char *host;
        uint16_t port;
        if (mt_topo_parse_listen(listen, &host, &port)) {
            fprintf(stderr, "moontide run: --listen '%s' is not HOST:PORT\n", listen);
            mt_topo_free(topo);
            return MT_EXIT_USAGE;
        }
        free(e->listen_host);
        e->listen_host = host;
        e->listen_port = port;
    }
    mt_diag_set_level((mt_diag_level) mt_diag_level_parse(e->log_level));
    raise_open_files();
    if (e->durability == MT_DURABILITY_NOSYNC) {
        mt_warn("durability is NOSYNC: acknowledged events can be lost on power failure");
    }

    int code = MT_EXIT_OK;
    mt_loop *loop = NULL;
    mt_store *store = NULL;
    mt_http *http = NULL;
    mt_subs *subs = NULL;
    mt_webhooks *hooks = NULL;
    mt_store_opts so = {
        .dir = e->data_dir,
        .map_size = e->map_size,
        .wal_size = e->wal_size,
        .nosync = e->durability == MT_DURABILITY_NOSYNC,
    };
    mt_err rc = mt_loop_new(&loop);
    if (rc) {
        code = MT_EXIT_SOFTWARE;
        goto out;
    }
    rc = mt_store_open(&so, &store);
    if (rc) {
        code = rc == MT_EUNAVAIL ? MT_EXIT_UNAVAILABLE : MT_EXIT_IOERR;
        goto out;
    }
    mt_loop_attach_store(loop, store);
    char why[1024];
    rc = mt_watch_start(e->data_dir, why, sizeof why);
    if (rc) {
        fprintf(stderr, "moontide run: %s\n", why);
        code = rc == MT_EIO ? MT_EXIT_IOERR : MT_EXIT_DATAERR;
        goto out;
    }
    mt_http_opts ho = {e->listen_host, e->listen_port, e->max_body};
    rc = mt_http_open(loop, store, &ho, &http);
    if (rc) {
        code = MT_EXIT_UNAVAILABLE;
        goto out;
    }
    rc = mt_subs_open(loop, store, topo, mt_lua_sub_runner(), &subs, why, sizeof why);
    if (rc) {
        fprintf(stderr, "moontide run: %s\n", why);
        code = MT_EXIT_CONFIG;
        goto out;
    }
    rc = mt_webhooks_open(loop, subs, &hooks, why, sizeof why);
    if (rc) {
        fprintf(stderr, "moontide run: %s\n", why);
        code = MT_EXIT_CONFIG;
        goto out;
    }
    mt_http_set_subs(http, subs);
    mt_subs_on_append(subs, on_handler_append, http);
    mt_subs_on_change(subs, on_sub_change, hooks);
    mt_subs_on_kick(subs, on_kick, hooks);
    mt_subs_kick(subs);
    mt_loop_on_stop(loop, NULL, NULL);
    mt_loop_on_reload(loop, on_reload, subs);
    pthread_sigmask(SIG_UNBLOCK, &hup, NULL); /* one held since the start is taken now */
    {
        char port[8];
        snprintf(port, sizeof port, "%u", mt_http_port(http));
        const char *fields[] = {"listen", e->listen_host, "port", port, "data_dir", e->data_dir,
                                NULL};
        mt_diag_emit(MT_DIAG_INFO, fields, "moontide %s listening on %s:%s", MT_VERSION,
                     e->listen_host, port);
    }
    if (mt_loop_run(loop)) {
        mt_error("the event loop failed");
        code = MT_EXIT_SOFTWARE;
    }

out:
    /* No reload while stopping: nor one after the loop is freed, when SIGHUP ends the process. */
    pthread_sigmask(SIG_BLOCK, &hup, NULL);
    /* Drain: no new connections; finish and answer every accepted write; then exit. */
    if (http) {
        mt_http_stop_accepting(http);
    }
    mt_subs_stop(subs);
    mt_webhooks_stop(hooks);
    if (loop) {
        mt_loop_detach_store(loop);
    }
    if (http) {
        /* Answers go out after the store is closed; nothing may reach it then. */
        mt_http_detach_store(http);
    }
    mt_store_close(store);
    mt_datacache_reap(); /* what the writer let go last */
    mt_webhooks_close(hooks);
    mt_subs_close(subs);
    mt_watch_stop(); /* the writer and the worker threads are gone */
    if (http) {
        mt_loop_run_for(loop, 200);
        mt_http_close(http);
    }
    mt_loop_free(loop);
    if (code == MT_EXIT_OK) {
        mt_info("stopped");
    }
    mt_topo_free(topo);
    return code;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs(usage_main, stderr);
        return MT_EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
        fputs(usage_main, stdout);
        return MT_EXIT_OK;
    }
    if (strcmp(cmd, "-V") == 0 || strcmp(cmd, "--version") == 0) {
        printf("moontide %s\n", MT_VERSION);
        return MT_EXIT_OK;
    }
    if (strcmp(cmd, "run") == 0) {
        return cmd_run(argc - 1, argv + 1);
    }
    if (strcmp(cmd, "check") == 0) {
        return cmd_check(argc - 1, argv + 1);
    }
    if (strcmp(cmd, "publish") == 0) {
        return mt_client_publish(argc - 1, argv + 1);
    }
    if (strcmp(cmd, "read") == 0) {
        return mt_client_read(argc - 1, argv + 1);
    }
    if (strcmp(cmd, "tail") == 0) {
        return mt_client_tail(argc - 1, argv + 1);
    }
    if (strcmp(cmd, "dlq") == 0) {
        return mt_client_dlq(argc - 1, argv + 1);
    }
    fprintf(stderr, "moontide: unknown command '%s'\n\n%s", cmd, usage_main);
    return MT_EXIT_USAGE;
}
