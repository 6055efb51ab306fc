/*
 * moontide.h - the contract of the `moontide` command, which moontide.c
 * wires from the modules (it holds main() and nothing else calls into it).
 *
 *   moontide run [-c FILE] [--data-dir DIR] [--listen HOST:PORT]
 *       Loads the topology (MT_DEFAULT_CONFIG unless -c), refuses to start on
 *       any topology error (every one printed as FILE:LINE:COL: error: ...,
 *       exit 78), opens the store (recovering from the write-ahead file),
 *       serves HTTP, runs subscriptions and webhooks until SIGTERM or SIGINT,
 *       then stops accepting, finishes what is in flight and exits 0. Raises
 *       its open-file soft limit to the hard limit. Exits 75 when a handler
 *       run passes its limits.time (mt_watch.h): start it again.
 *   moontide check [-c FILE]
 *       The same checks as run, handlers loaded and compiled; exit 0 or 78.
 *   moontide publish | read | tail | dlq ...
 *       HTTP clients of a running engine (mt_client.h).
 *   moontide --help | --version, and COMMAND --help.
 *
 * Exit codes (mt_client.h): 0 ok, 64 usage, 65 bad data, 69 unavailable
 * (the port, a locked data directory, an engine not answering), 70
 * internal, 74 storage I/O error, 75 a handler got stuck (run again),
 * 78 bad configuration.
 */
#ifndef MOONTIDE_H
#define MOONTIDE_H

#define MT_DEFAULT_CONFIG "config/default.yaml"

#endif
