/* SPDX-License-Identifier: MIT */
#include <fcntl.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <sys/stat.h>

#include "ctl-util.h"
#include "json-util.h"

#define CTL_DEFAULT_URL "http://127.0.0.1:8080"

void ctl_done(Ctl *ctl) {
        free(ctl->url);
        erase_and_free(ctl->api_key);
        strv_free(ctl->claims);
        *ctl = (Ctl) {};
}

int ctl_error(int error, const char *format, ...) {
        va_list ap;

        error = error == 0 ? EINVAL : abs(error);
        errno = error;
        va_start(ap, format);
        (void) vfprintf(stderr, format, ap);
        va_end(ap);
        fputc('\n', stderr);
        return -error;
}

int ctl_usage(const char *verb, const char *format, ...) {
        va_list ap;

        va_start(ap, format);
        (void) vfprintf(stderr, format, ap);
        va_end(ap);
        fprintf(stderr, "\nSee 'dtaskctl %s%s--help'.\n", strempty(verb), verb ? " " : "");
        return CTL_EXIT_USAGE;
}

int ctl_client(Ctl *ctl, DtaskClient **ret) {
        DtaskClient *c = NULL;
        const char *url, *key;
        int r;

        url = ctl->url ?: getenv("DTASK_API_URL");
        if (isempty(url))
                url = CTL_DEFAULT_URL;
        key = ctl->api_key ?: getenv("DTASK_API_KEY");
        if (isempty(key))
                return ctl_error(ENOKEY, "No API key: pass --api-key=KEY or --api-key-file=PATH, or set $DTASK_API_KEY.");

        r = dtask_client_new_blocking(&c, url, key);
        if (r == -EPROTONOSUPPORT)
                return ctl_error(r, "Unsupported URL %s: only http:// is supported.", url);
        if (r == -EINVAL)
                return ctl_error(r, "Invalid URL %s or API key (expected http://HOST[:PORT] and a printable key).", url);
        if (r == -EADDRNOTAVAIL)
                return ctl_error(r, "Cannot resolve the host of %s.", url);
        if (r < 0)
                return ctl_error(r, "Failed to set up the API client: %m");
        if (ctl->timeout_usec > 0)
                (void) dtask_client_set_timeout(c, ctl->timeout_usec);
        *ret = c;
        return 0;
}

/* "ttl": ["must be …"] → "  ttl: must be …" lines (the detail already names the first one). */
static void print_field_errors(const char *errors) {
        _cleanup_json_ json_object *o = NULL;
        size_t n = 0;

        if (!errors)
                return;
        o = json_tokener_parse(errors);
        if (!json_object_is_type(o, json_type_object))
                return;
        json_object_object_foreach(o, key, value)
                if (key && json_object_is_type(value, json_type_array))
                        n += json_object_array_length(value);
        if (n < 2)
                return;
        json_object_object_foreach(o, field, list) {
                if (!json_object_is_type(list, json_type_array))
                        continue;
                for (size_t i = 0; i < json_object_array_length(list); i++)
                        fprintf(stderr, "  %s: %s\n", field, json_object_get_string(json_object_array_get_idx(list, i)));
        }
}

int ctl_api_error(Ctl *ctl, DtaskClient *c, int error, const char *what) {
        const DtaskReply *reply = dtask_client_get_last_reply(c);

        if (reply && reply->http_status > 0 && reply->problem_detail) {
                fprintf(stderr, "Failed to %s: %s (HTTP %u)\n", what, reply->problem_detail, reply->http_status);
                print_field_errors(reply->problem_errors);
        } else if (reply && reply->http_status > 0)
                fprintf(stderr, "Failed to %s: HTTP %u: %s\n", what, reply->http_status, strerror(abs(error)));
        else if (error == -ECONNREFUSED || error == -ETIMEDOUT || error == -EHOSTUNREACH || error == -ENETUNREACH ||
                 error == -ECONNRESET)
                fprintf(stderr, "Failed to %s: %s (%s)\n", what, strerror(abs(error)),
                        ctl->url ?: getenv("DTASK_API_URL") ?: CTL_DEFAULT_URL);
        else if (error == -EBADMSG)
                fprintf(stderr, "Failed to %s: the server's reply is not what the dtask API sends.\n", what);
        else
                fprintf(stderr, "Failed to %s: %s\n", what, strerror(abs(error)));
        return error;
}

int ctl_read_file(const char *path, size_t max, char **ret) {
        _cleanup_close_ int fd = -EBADF;
        _cleanup_free_ char *buf = NULL;
        size_t size = 0, allocated = 0;
        int in;

        if (streq(path, "-"))
                in = STDIN_FILENO;
        else {
                fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
                if (fd < 0)
                        return ctl_error(errno, "Cannot open %s: %m", path);
                in = fd;
        }

        for (;;) {
                ssize_t n;

                if (size + 4096 + 1 > allocated) {
                        char *p;

                        allocated = MAX(allocated * 2, (size_t) 16384);
                        p = realloc(buf, allocated);
                        if (!p)
                                return ctl_error(ENOMEM, "Out of memory.");
                        buf = p;
                }
                n = read(in, buf + size, allocated - size - 1);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return ctl_error(errno, "Cannot read %s: %m", streq(path, "-") ? "standard input" : path);
                }
                if (n == 0)
                        break;
                size += (size_t) n;
                if (size > max)
                        return ctl_error(EFBIG, "%s is larger than %zu bytes.", streq(path, "-") ? "Standard input" : path,
                                         max);
        }
        buf[size] = '\0';
        if (strlen(buf) != size)
                return ctl_error(EBADMSG, "%s contains NUL bytes.", streq(path, "-") ? "Standard input" : path);
        *ret = TAKE_PTR(buf);
        return 0;
}

int ctl_print_json(Ctl *ctl, const char *json) {
        _cleanup_json_ json_object *o = NULL;

        if (ctl->json != CTL_JSON_PRETTY) {
                puts(json);
                return 0;
        }
        o = json_tokener_parse(json);
        if (!o) {
                puts(json);
                return 0;
        }
        puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED |
                                                       JSON_C_TO_STRING_NOSLASHESCAPE));
        return 0;
}

static void print_time(const char *label, uint64_t t) {
        char buf[DTASK_TIMESTAMP_MAX];

        if (t > 0)
                printf("%12s: %s\n", label, dtask_timestamp_format(t, buf, sizeof buf));
}

static void print_block(const char *label, const char *text) {
        size_t n;

        if (isempty(text))
                return;
        printf("\n--- %s ---\n%s", label, text);
        n = strlen(text);
        if (text[n - 1] != '\n')
                putchar('\n');
}

void ctl_print_task(const DtaskTask *t) {
        printf("%12s: %s\n", "ID", t->id);
        printf("%12s: %s\n", "Name", strna(t->name));
        printf("%12s: %s\n", "Language", strna(dtask_language_to_string(t->language)));
        printf("%12s: %s (%d)\n", "Status", t->status_name ?: strna(dtask_status_to_string(t->status)), (int) t->status);
        if (t->verdict)
                printf("%12s: %s\n", "Verdict", t->verdict);
        if (t->has_exit_code)
                printf("%12s: %d\n", "Exit code", t->exit_code);
        if (t->output_truncated)
                printf("%12s: %s\n", "Output", "truncated (a cap was hit)");
        printf("%12s: %s\n", "TTL", strna(t->ttl));
        print_time("Created", t->created_at);
        print_time("Started", t->started_at);
        print_time("Completed", t->completed_at);
        print_time("Expires", t->expires_at);
        printf("%12s: %u\n", "Retries", t->retry_count);
        printf("%12s: %u\n", "Attempt", t->attempt);
        if (t->user_id)
                printf("%12s: %s\n", "Owner", t->user_id);
        if (t->input_data)
                printf("%12s: %zu bytes\n", "Input", strlen(t->input_data));
        print_block("stdout", t->result);
        print_block(t->status == DTASK_STATUS_FAILED || t->status == DTASK_STATUS_EXPIRED ? "error" : "stderr",
                    t->error_message);
}
