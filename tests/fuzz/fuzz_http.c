/* fuzz_http.c: see fuzz_http.h. The request flow mirrors server/http.c's
 * on_request (first call: route, body cap, upload begin; body chunks; end:
 * upload end, handler, reply) without authentication. */
#include "fuzz_http.h"

#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api/auth.h"
#include "api/log.h"
#include "fuzz_common.h"
#include "server/handlers.h"
#include "server/jsonw.h"
#include "base/file.h"

static server g_srv;

static enum MHD_Result send_reply(req *r)
{
    struct MHD_Response *resp = r->resp;
    r->resp = NULL;
    if (!r->status) {
        fprintf(stderr, "fuzz_http: %s %s: the handler sent no reply\n", r->method, r->url);
        abort(); /* every handler answers with exactly one reply */
    }
    if (!resp && !r->json) {
        fprintf(stderr, "fuzz_http: %s %s: status %d with no body (json_pack failed?)\n",
                r->method, r->url, r->status);
        abort(); /* every reply_json/reply_error carries a JSON body */
    }
    if (!resp) {
        size_t n = 0;
        char *text = r->json ? jsonw_dump(r->json, &n) : NULL;
        resp = MHD_create_response_from_buffer(n, text ? text : (char *)"",
                                               text ? MHD_RESPMEM_MUST_FREE
                                                    : MHD_RESPMEM_PERSISTENT);
        if (!resp) { free(text); return MHD_NO; }
    }
    MHD_add_response_header(resp, "Connection", "close");
    enum MHD_Result ok = MHD_queue_response(r->conn, (unsigned)r->status, resp);
    MHD_destroy_response(resp);
    r->queued = 1;
    return ok;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *data, size_t *size, void **req_cls)
{
    server *s = cls;
    req *r = *req_cls;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r) return MHD_NO;
        *req_cls = r;
        r->s = s;
        r->conn = c;
        r->url = url;
        r->method = method;
        snprintf(r->owner, sizeof r->owner, "fuzz-owner");
        r->route = route_find(s->routes, s->nroutes, method, url, r->params);
        if (r->route < 0) {
            int nf = r->route == -1;
            r->route = -1;
            reply_error(r, nf ? 404 : 405, nf ? "not_found" : "method_not_allowed", NULL,
                        "%s %.200s", method, url);
            return send_reply(r);
        }
        const route *rt = &s->routes[r->route];
        r->limit = rt->flags & R_UPLOAD ? s->cfg.max_upload_bytes + 65536 : s->cfg.max_json_bytes;
        if ((rt->flags & R_UPLOAD) && files_upload_begin(r)) return send_reply(r);
        return MHD_YES;
    }
    if (r->queued) { *size = 0; return MHD_YES; }
    const route *rt = &s->routes[r->route];
    if (*size) {
        size_t n = *size;
        *size = 0;
        r->received += (int64_t)n;
        if (r->over_limit || r->received > r->limit) { r->over_limit = 1; return MHD_YES; }
        if (rt->flags & R_UPLOAD) return files_upload_data(r, data, n) ? MHD_NO : MHD_YES;
        if (rt->flags & R_JSON) {
            char *b = realloc(r->body, r->body_len + n + 1);
            if (!b) return MHD_NO;
            r->body = b;
            memcpy(r->body + r->body_len, data, n);
            r->body_len += n;
            r->body[r->body_len] = 0;
        }
        return MHD_YES;
    }
    if (rt->flags & R_UPLOAD) files_upload_end(r);
    if (r->over_limit)
        reply_error(r, 413, "request_too_large", NULL, "too large");
    else if (!r->status)
        rt->handler(r);
    req_db_release(r);
    return send_reply(r);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    req *r = *req_cls;
    if (!r) return;
    *req_cls = NULL;
    if (r->up) files_upload_free(r);
    req_db_release(r);
    json_decref(r->json);
    if (r->resp) MHD_destroy_response(r->resp);
    free(r->body);
    free(r);
}

static void quiet(void *cls, const char *fmt, va_list ap) {}

static void stop(void)
{
    if (g_srv.daemon) MHD_stop_daemon(g_srv.daemon);
    g_srv.daemon = NULL;
    metrics_free(g_srv.m);
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
    g_srv.m = metrics_new(server_nroutes);
    g_srv.started_at = 1;
    g_srv.daemon = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_NO_LISTEN_SOCKET | MHD_USE_ITC |
            MHD_USE_ERROR_LOG,
        0, NULL, NULL, on_request, &g_srv, MHD_OPTION_EXTERNAL_LOGGER, quiet, NULL,
        MHD_OPTION_CONNECTION_TIMEOUT, 10u, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)(64 * 1024), MHD_OPTION_NOTIFY_COMPLETED, on_completed, &g_srv,
        MHD_OPTION_END);
    if (!g_srv.daemon) { fprintf(stderr, "fuzz_http: MHD_start_daemon failed\n"); abort(); }
    atexit(stop);
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
    char buf[16384], first[16] = "";
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
            for (ssize_t i = 0; i < k && got < sizeof first - 1; i++) first[got++] = buf[i];
        }
    }
    close(sv[0]);
    first[got] = 0;
    return !strncmp(first, "HTTP/1.", 7) && got >= 12 ? atoi(first + 9) : 0;
}
