/* cli.h: shared pieces of the nightshift command line: exit codes, checked number
 * parsing for flags, and the subcommand entry points (each returns an exit code). */
#ifndef NS_CLI_H
#define NS_CLI_H

#include <stdbool.h>
#include <stdint.h>

/* Exit codes (documented in `nightshift --help` and README). */
enum {
    NS_EXIT_OK = 0,
    NS_EXIT_FAILURE = 1,  /* the command failed (message on stderr) */
    NS_EXIT_USAGE = 2,    /* bad command line */
    NS_EXIT_INPUT = 3,    /* bad input file: model, spec, data (message names it) */
    NS_EXIT_INTERRUPTED = 4, /* run stopped by SIGINT/SIGTERM; rerun to resume */
};

/* Parse a whole string as a number within [lo, hi]; on failure print an error naming
 * the flag and return false. */
bool ns_cli_parse_int(const char *flag, const char *s, long long lo, long long hi, long long *out);
bool ns_cli_parse_float(const char *flag, const char *s, double lo, double hi, double *out);
/* Reads a whole file into a malloc'd NUL-terminated buffer; NULL after printing an error. */
char *ns_cli_read_file(const char *path, size_t *len);

/* Writes job's finished items to out_path ("-" or NULL: stdout) as format ("jsonl",
 * "openai-batch", or NULL: the job's output.format), zstd-compressed when asked.
 * Returns an exit code; messages on stderr. (runner/cmd_export.c) */
struct ns_store;
int ns_export_job(struct ns_store *s, int64_t job, const char *out_path, const char *format, bool zstd);

/* The queue database: $NIGHTSHIFT_DB, else "nightshift.db" in the current directory. */
const char *ns_cli_default_db(void);

int ns_cmd_generate(int argc, char **argv);
int ns_cmd_submit(int argc, char **argv);
int ns_cmd_run(int argc, char **argv);
int ns_cmd_status(int argc, char **argv);
int ns_cmd_export(int argc, char **argv);
int ns_cmd_cancel(int argc, char **argv);
int ns_cmd_retry(int argc, char **argv);
int ns_cmd_model_info(int argc, char **argv);
int ns_cmd_tokenize(int argc, char **argv);

#endif
