/*
 * mt_client.h - the CLI's HTTP client commands: publish, read, tail.
 *
 * Each command talks to a running engine's HTTP API (docs/http-api.md) over
 * a blocking libevent evhttp connection on its own event base, prints to
 * stdout, reports problems on stderr, and returns a process exit code
 * (sysexits: 0 ok, 64 usage, 65 bad data, 69 engine unavailable,
 * 70 internal). Runs on the calling thread only; no global state.
 *
 * Common to every command:
 * - `--url URL` (default $MOONTIDE_URL, else http://127.0.0.1:8080) must be
 *   http://HOST[:PORT][/PATH]; a PATH prefixes every request path. Anything
 *   else is a usage error. Names resolve with a blocking getaddrinfo.
 * - `--help` prints the usage to stdout and returns 0; bad usage prints the
 *   problem and the usage to stderr and returns 64. Options are parsed with
 *   getopt_long after resetting `optind = 0`, so main() may use getopt first.
 * - One connection serves every request of a command (HTTP/1.1 keep-alive);
 *   each request times out after 90 s.
 * - No answer from the engine: `moontide: cannot reach engine at URL: REASON`,
 *   69. An error answer: `moontide: STATUS ERROR: DETAIL` from its JSON body,
 *   then 65 for 400/409/413/415, 69 for 503/507, 70 for anything else.
 * - While a request is in flight SIGPIPE is ignored (a closed socket is then
 *   an error, not death) and the previous disposition is restored after it;
 *   a closed stdout still ends the process with SIGPIPE as usual. Another
 *   stdout write error: `moontide: cannot write to stdout`, 70.
 * - Output is one compact JSON value a line; stdout is flushed after every
 *   answer, so each line is out before the next request is made.
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
    MT_EXIT_IOERR = 74,
    MT_EXIT_CONFIG = 78
};

/*
 * `moontide publish [--url URL] [--type T --source S [--id ID] [--subject X]
 *  [--data JSON] [--expected-version V]] [--file F] [-]`.
 * argv[0] is "publish". Returns an exit code.
 *
 * Three exclusive sources (mixing them is a usage error):
 * - flags: --type and --source required; also --id (default: a random
 *   UUIDv4 from /dev/urandom), --subject, --data, --datacontenttype and
 *   --time (RFC 3339, checked locally). --data must be JSON (else 65, naming
 *   the problem and its byte position) and is spliced into the structured
 *   event byte for byte, never re-encoded, so 1.10 and 64-bit integers
 *   arrive as typed. Sent as application/cloudevents+json.
 * - `--file F`: F holds one event object (sent as application/cloudevents+json)
 *   or an array of events (application/cloudevents-batch+json, one atomic
 *   batch); its bytes are sent as they are once they parse as JSON. An
 *   unreadable file or bad JSON (reported as F:LINE:COLUMN) is 65.
 * - `-`, or no event flags with stdin not a terminal: one event object per
 *   stdin line, one request per line; blank lines are skipped. A line that
 *   is not a JSON object (`stdin:LINE:COLUMN: ...`) or that the engine
 *   refuses stops the run with 65 (or the refusal's code); events on earlier
 *   lines stay published. No flags, no `-`, stdin a terminal: usage error.
 * `--expected-version V` (any, no_stream, exists or a number; anything else
 * is a usage error) is sent as the moontide-expected-version header on every
 * request. For each event the engine answers, prints its element of the
 * answer's "events" array: {"id":...,"sequence":...,"streamversion":...}
 * plus "duplicate":true for an event the engine already had.
 */
int mt_client_publish(int argc, char **argv);

/*
 * `moontide read [--url URL] [--stream SUBJECT] [--after SEQ|--from VERSION] [--limit N]`.
 * argv[0] is "read". Returns an exit code.
 *
 * Without --stream, prints the log's events after sequence --after (default
 * 0: all), via GET /events; with it, the subject's events from stream version
 * --from (default 0), via GET /streams/{percent-encoded subject}. --after with
 * --stream, or --from without it, is a usage error. --limit N (N >= 1) caps
 * the number printed; by default everything is printed, paging 1000 events a
 * request until a page comes back short. Each event is one line holding the
 * engine's text for it with only the whitespace between tokens removed, so
 * data keeps its exact numbers (it is not re-encoded). A stream with no
 * events (404): `moontide: stream 'X' not found`, 65. Nothing to print is
 * not an error.
 */
int mt_client_read(int argc, char **argv);

/*
 * `moontide tail [--url URL] [--after SEQ]`: follows the log until interrupted.
 * argv[0] is "tail". Returns an exit code.
 *
 * Starts after --after SEQ, or by default after the current head (the "head"
 * of GET /healthz), so only new events show; `--after 0` prints the whole log
 * and then follows. Long-polls GET /events?after=SEQ&limit=1000&wait=30s and
 * prints each event as read does, flushing after every batch. If the first
 * request gets no answer, returns 69 like the other commands. Later, losing
 * the engine (no answer, or a 5xx such as 503 while it shuts down) prints
 * one `moontide: lost engine at URL: REASON; retrying every second`, retries
 * every second from the same sequence, and prints `moontide: engine at URL
 * is back` when it answers again. A 4xx ends the command as above. SIGINT or
 * SIGTERM (caught on the command's event base for its duration, then the
 * previous handlers are restored) cancels any request in flight and returns 0.
 */
int mt_client_tail(int argc, char **argv);

/* `moontide dlq list|show|redrive|purge SUBSCRIPTION [SEQUENCE] [--url URL]`. */
int mt_client_dlq(int argc, char **argv);

#endif
