/* static.c: the dashboard at / and its assets at /static/NAME, public (the
 * page signs in with an API key itself), from the copies embedded in the
 * binary. Every reply has a strong ETag (If-None-Match -> 304); index.html
 * is revalidated on every load (no-cache) and names its assets with
 * ?v=<content hash>, which are then cached for a year (immutable). A
 * strict Content-Security-Policy allows only this origin: no CDN, no inline
 * script. */
#include <string.h>

#include "handlers.h"
#include "static.h"

const static_file *static_find(const char *name)
{
    for (int i = 0; i < server_static_nfiles; i++)
        if (!strcmp(server_static_files[i].name, name)) return &server_static_files[i];
    return NULL;
}

static void serve(req *r, const static_file *f, int immutable)
{
    const char *inm = req_header(r, MHD_HTTP_HEADER_IF_NONE_MATCH);
    int not_modified = inm && http_etag_match(inm, f->etag);
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        not_modified ? 0 : f->len, not_modified ? (void *)"" : (void *)f->data,
        MHD_RESPMEM_PERSISTENT);
    if (!resp) { reply_error(r, 500, "internal_error", NULL, "out of memory"); return; }
    if (!not_modified) MHD_add_response_header(resp, "Content-Type", f->type);
    MHD_add_response_header(resp, "ETag", f->etag);
    MHD_add_response_header(resp, "Cache-Control",
                            immutable ? "public, max-age=31536000, immutable" : "no-cache");
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    if (!strcmp(f->name, "index.html")) {
        MHD_add_response_header(resp, "Content-Security-Policy",
                                "default-src 'self'; img-src 'self' data: blob:; "
                                "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
                                "form-action 'self'");
        MHD_add_response_header(resp, "X-Frame-Options", "DENY");
        MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
    }
    reply_mhd(r, not_modified ? 304 : 200, resp);
}

void static_index(req *r)
{
    const static_file *f = static_find("index.html");
    if (!f) { reply_error(r, 404, "not_found", NULL, "this server was built without the dashboard"); return; }
    serve(r, f, 0);
}

void static_asset(req *r)
{
    const static_file *f = static_find(r->params[0]);
    if (!f || !strcmp(f->name, "index.html")) {
        reply_error(r, 404, "not_found", NULL, "no such file: /static/%.200s", r->params[0]);
        return;
    }
    const char *v = req_query(r, "v");
    serve(r, f, v && !strcmp(v, f->version));
}
