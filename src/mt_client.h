/*
 * mt_client.h - the CLI's HTTP client commands: publish, read, tail.
 *
 * Each command talks to a running engine's HTTP API (docs/http-api.md) over
 * a blocking libevent evhttp connection on its own event base, prints to
 * stdout, reports problems on stderr, and returns a process exit code
 * (sysexits: 0 ok, 64 usage, 65 bad data, 69 engine unavailable,
 * 70 internal). Runs on the calling thread only; no global state.
 */
#ifndef MT_CLIENT_H
#define MT_CLIENT_H

/* Exit codes shared by every subcommand. */
enum {
    MT_EXIT_OK = 0,
    MT_EXIT_USAGE = 64,
    MT_EXIT_DATAERR = 65,
    MT_EXIT_UNAVAILABLE = 69,
    MT_EXIT_SOFTWARE = 70,
    MT_EXIT_CONFIG = 78
};

/*
 * `moontide publish [--url URL] [--type T --source S [--id ID] [--subject X]
 *  [--data JSON] [--expected-version V]] [--file F] [-]`.
 * argv[0] is "publish". Returns an exit code.
 */
int mt_client_publish(int argc, char **argv);

/* `moontide read [--url URL] [--stream SUBJECT] [--after SEQ|--from VERSION] [--limit N]`. */
int mt_client_read(int argc, char **argv);

/* `moontide tail [--url URL] [--after SEQ]`: follows the log until interrupted. */
int mt_client_tail(int argc, char **argv);

#endif
