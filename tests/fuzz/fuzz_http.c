/* fuzz_http.c: see fuzz_http.h. The request flow is server/http.c's own
 * (http_on_request, http_on_completed, http_unescape, linked from
 * server/http.o) on a daemon without a listening socket; the server's hooks
 * are wired as server/main.c wires them, except auth. */
#include "fuzz_http.h"

#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api/auth.h"
#include "api/log.h"
#include "fuzz_common.h"
#include "server/handlers.h"
#include "server/jsonw.h"
#include "server/sse.h"
#include "base/file.h"

static server g_srv;

/* The server's auth hook: any key belongs to "fuzz-owner" (the real one
 * looks the key up in PostgreSQL, which is down here). */
static int fuzz_auth(req *r, const char *authorization, char *owner, char *err)
{
    snprintf(owner, DB_OWNER_LEN, "fuzz-owner");
    return 0;
}

static void quiet(void *cls, const char *fmt, va_list ap) {}

static void stop(void)
{
    http_stop(&g_srv); /* the real one: before_stop (sse.c), then MHD */
    metrics_free(g_srv.on_complete_cls);
    g_srv.on_complete_cls = NULL;
}

void fuzz_http_init(void)
{
    if (g_srv.daemon) return;
    char dir[600], err[DT_ERR_LEN];
    log_init("fuzz", 99); /* silent */
    /* OpenSSL's one-time initialization (config, per-thread error state):
     * on this thread, before any input, so the leak checker blames none. */
    auth_sha256_free(auth_sha256_new());
    config_defaults(&g_srv.cfg);
    snprintf(g_srv.cfg.artifact_root, sizeof g_srv.cfg.artifact_root, "%s", fuzz_tmpdir());
    snprintf(dir, sizeof dir, "%s/files", g_srv.cfg.artifact_root);
    if (dt_mkdirs(dir, err)) { fprintf(stderr, "%s\n", err); abort(); }
    g_srv.cfg.max_upload_bytes = 1 << 20;
    g_srv.cfg.max_json_bytes = 64 << 10;
    g_srv.routes = server_routes;
    g_srv.nroutes = server_nroutes;
    g_srv.started_at = 1;
    g_srv.on_complete = metrics_observe;
    g_srv.on_complete_cls = metrics_new(server_nroutes);
    g_srv.before_stop = sse_shutdown;
    g_srv.auth = fuzz_auth;
    if (!g_srv.on_complete_cls) { fprintf(stderr, "fuzz_http: out of memory\n"); abort(); }
    /* http_start's callbacks (the whole request flow) on a daemon without a
     * listening socket: connections come from fuzz_http_request */
    g_srv.daemon = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_NO_LISTEN_SOCKET | MHD_USE_ITC |
            MHD_USE_ERROR_LOG | MHD_ALLOW_SUSPEND_RESUME,
        0, NULL, NULL, http_on_request, &g_srv, MHD_OPTION_EXTERNAL_LOGGER, quiet, NULL,
        MHD_OPTION_CONNECTION_TIMEOUT, 10u, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)(64 * 1024), MHD_OPTION_NOTIFY_COMPLETED, http_on_completed, &g_srv,
        MHD_OPTION_UNESCAPE_CALLBACK, http_unescape, NULL, MHD_OPTION_END);
    if (!g_srv.daemon) { fprintf(stderr, "fuzz_http: MHD_start_daemon failed\n"); abort(); }
    atexit(stop);
}

/* Every reply_json / reply_error carries a JSON body: a JSON reply with an
 * empty one is a reply whose json_pack failed (a NULL body). head is the
 * start of what the daemon sent. */
static void check_reply(const char *head)
{
    const char *end = strstr(head, "\r\n\r\n");
    if (!end) return;
    int json = 0, empty = 0;
    for (const char *l = strstr(head, "\r\n"); l && l < end; l = strstr(l + 2, "\r\n")) {
        if (!strncasecmp(l + 2, "Content-Type: application/json", 30)) json = 1;
        if (!strncasecmp(l + 2, "Content-Length: 0\r\n", 19)) empty = 1;
    }
    if (json && empty) {
        fprintf(stderr, "fuzz_http: a JSON reply with no body (json_pack failed?):\n%.*s\n",
                (int)(end - head), head);
        abort();
    }
}

int fuzz_http_request(const char *data, size_t n)
{
    int sv[2];
    fuzz_http_init();
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv)) { perror("socketpair"); abort(); }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(1234),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (MHD_add_connection(g_srv.daemon, sv[1], (struct sockaddr *)&a, sizeof a) != MHD_YES) {
        fprintf(stderr, "fuzz_http: MHD_add_connection failed\n");
        abort();
    }
    /* write and read at once: a reply may come before the whole body */
    char buf[16384], head[4096] = "";
    size_t sent = 0, got = 0;
    int wr_open = 1;
    for (;;) {
        struct pollfd p = {.fd = sv[0], .events = POLLIN | (wr_open ? POLLOUT : 0)};
        int pr = poll(&p, 1, 20000);
        if (pr == 0) {
            fprintf(stderr, "fuzz_http: no reply within 20 s (hang)\n");
            abort();
        }
        if (pr < 0) { if (errno == EINTR) continue; perror("poll"); abort(); }
        if (wr_open && (p.revents & (POLLOUT | POLLERR | POLLHUP))) {
            ssize_t w = sent < n ? send(sv[0], data + sent, n - sent, MSG_NOSIGNAL) : 0;
            if (w > 0) sent += (size_t)w;
            if (sent >= n || w < 0) { shutdown(sv[0], SHUT_WR); wr_open = 0; }
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t k = recv(sv[0], buf, sizeof buf, 0);
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) break;
            for (ssize_t i = 0; i < k && got < sizeof head - 1; i++) head[got++] = buf[i];
        }
    }
    close(sv[0]);
    head[got] = 0;
    check_reply(head);
    return !strncmp(head, "HTTP/1.", 7) && got >= 12 ? atoi(head + 9) : 0;
}
