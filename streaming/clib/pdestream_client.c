/* pdestream C client: the external-solver protocol of streaming/transport/wire.py in C.
 *
 * Every frame on the socket: a 16-byte prefix (magic "PDS1", uint32 header length, uint64 payload
 * length, big-endian), a JSON object, the raw payload. Client to job: hello, chunk (header "wire" =
 * the chunk's metadata, payload = float32 little-endian fields (n_frames, C, *local)), end, and after the
 * job's bye the next simulation's hello on the same connection when the welcome said "reuse". Job to
 * client: welcome, ack, dropped, error, bye, stop. See pdestream_client.h for the API.
 */
#define _POSIX_C_SOURCE 200809L
#include "pdestream_client.h"

#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0
#endif

#define PDS_PROTOCOL 1
#define PDS_WIRE_VERSION 2
#define PDS_DEFAULT_ADDRESS "127.0.0.1:47011"
#define PDS_MAX_REPLY_HEADER (1L << 20)
#define PDS_AUTO_BATCH_BYTES (4L << 20)
#define PDS_MAX_AUTO_BATCH 256 /* frames: a 64 x 64 float32 field reaches the 4 MiB first */

static _Thread_local char g_err[1024];
static _Thread_local int g_code;

struct pds_client {
    int fd;
    char *address;       /* host:port, for messages */
    long sim_id;
    int n_fields;
    char **fields;
    int ndim;
    long *grid, *offset, *local;  /* offset: NULL for a whole-grid client */
    int n_params;
    double *params;
    size_t cells;        /* prod(local) */
    int batch;           /* frames per message */
    float *buf;          /* (batch, n_fields, cells) */
    long *frame_index;   /* (batch,) */
    int n;               /* complete frames in buf */
    long cur;            /* frame being assembled, -1: none */
    unsigned char *have; /* (n_fields,) */
    int have_count;
    long last;           /* last complete frame, -1: none */
    int unacked, window, dropped, bye;
    int ended;           /* pds_end sent "end": only pds_close (wait for "bye") is left */
    int reuse;           /* the job takes another hello on this connection after its "bye" */
    char *pool_key;      /* the address as given (token included): where a kept connection may be reused */
    double send_timeout; /* < 0: forever */
    int dead;            /* connection gone: every later call returns dead_code */
    int dead_code;
    char dead_msg[1024];
};

/* ------------------------------------------------------------------ errors */
static int fail(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    g_code = code;
    return code;
}

const char *pds_last_error(void) { return g_err; }
int pds_fail_(int code, const char *msg) { return fail(code, "%s", msg); }
int pds_last_code(void) { return g_code; }

static void close_fd(pds_client *c) {
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
}

/* The connection is gone: remember why (later calls repeat it) and close the socket. */
static int die(pds_client *c, int code) {
    c->dead = 1;
    c->dead_code = code;
    snprintf(c->dead_msg, sizeof c->dead_msg, "%s", g_err);
    close_fd(c);
    return code;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double env_seconds(const char *name, double dflt) {
    const char *v = getenv(name);
    if (!v || !*v) return dflt;
    char *end;
    double x = strtod(v, &end);
    return (end != v && x >= 0) ? x : dflt;
}

/* ------------------------------------------------------------------ a growing string (JSON writer) */
typedef struct { char *s; size_t n, cap; int oom; } sbuf;

static void sb_add(sbuf *b, const char *s, size_t k) {
    if (b->oom) return;
    if (b->n + k + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + k + 1) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) { b->oom = 1; return; }
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->n, s, k);
    b->n += k;
    b->s[b->n] = 0;
}

static void sb_str(sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }

static void sb_fmt(sbuf *b, const char *fmt, ...) {
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (k < 0) return;
    if ((size_t)k < sizeof tmp) { sb_add(b, tmp, (size_t)k); return; }
    char *big = malloc((size_t)k + 1);
    if (!big) { b->oom = 1; return; }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)k + 1, fmt, ap);
    va_end(ap);
    sb_add(b, big, (size_t)k);
    free(big);
}

static void sb_json_string(sbuf *b, const char *s) {
    sb_add(b, "\"", 1);
    for (; *s; ++s) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') { sb_add(b, "\\", 1); sb_add(b, s, 1); }
        else if (ch < 0x20) sb_fmt(b, "\\u%04x", ch);
        else sb_add(b, s, 1);
    }
    sb_add(b, "\"", 1);
}

static void sb_longs(sbuf *b, const long *v, int n) {
    sb_add(b, "[", 1);
    for (int i = 0; i < n; ++i) sb_fmt(b, i ? ",%ld" : "%ld", v[i]);
    sb_add(b, "]", 1);
}

/* ------------------------------------------------------------------ a small reader of the job's JSON answers */
static const char *skip_ws(const char *p, const char *e) {
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) ++p;
    return p;
}

static const char *skip_string(const char *p, const char *e) { /* p at the opening quote */
    for (++p; p < e; ++p) {
        if (*p == '\\') ++p;
        else if (*p == '"') return p + 1;
    }
    return NULL;
}

static const char *skip_value(const char *p, const char *e) {
    p = skip_ws(p, e);
    if (p >= e) return NULL;
    if (*p == '"') return skip_string(p, e);
    if (*p == '{' || *p == '[') {
        int depth = 0;
        while (p < e) {
            if (*p == '"') { p = skip_string(p, e); if (!p) return NULL; continue; }
            if (*p == '{' || *p == '[') ++depth;
            else if (*p == '}' || *p == ']') { if (--depth == 0) return p + 1; }
            ++p;
        }
        return NULL;
    }
    while (p < e && *p != ',' && *p != '}' && *p != ']' && *p != ' ') ++p;
    return p;
}

/* The value of top-level key `key` in the JSON object [s, e), or NULL. */
static const char *json_find(const char *s, const char *e, const char *key) {
    const char *p = skip_ws(s, e);
    if (p >= e || *p != '{') return NULL;
    ++p;
    size_t klen = strlen(key);
    for (;;) {
        p = skip_ws(p, e);
        if (p >= e || *p != '"') return NULL;
        const char *k0 = p + 1, *k1 = skip_string(p, e);
        if (!k1) return NULL;
        p = skip_ws(k1, e);
        if (p >= e || *p != ':') return NULL;
        p = skip_ws(p + 1, e);
        if ((size_t)(k1 - 1 - k0) == klen && memcmp(k0, key, klen) == 0) return p;
        p = skip_value(p, e);
        if (!p) return NULL;
        p = skip_ws(p, e);
        if (p < e && *p == ',') { ++p; continue; }
        return NULL;
    }
}

static void put_utf8(char **o, char *end, unsigned cp) {
    char tmp[4];
    int k;
    if (cp < 0x80) { tmp[0] = (char)cp; k = 1; }
    else if (cp < 0x800) { tmp[0] = (char)(0xC0 | (cp >> 6)); tmp[1] = (char)(0x80 | (cp & 0x3F)); k = 2; }
    else if (cp < 0x10000) {
        tmp[0] = (char)(0xE0 | (cp >> 12)); tmp[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        tmp[2] = (char)(0x80 | (cp & 0x3F)); k = 3;
    } else {
        tmp[0] = (char)(0xF0 | (cp >> 18)); tmp[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        tmp[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); tmp[3] = (char)(0x80 | (cp & 0x3F)); k = 4;
    }
    if (*o + k < end) { memcpy(*o, tmp, (size_t)k); *o += k; }
}

/* Decode the JSON string value of `key` into out (size cap); 0 when found. */
static int json_string(const char *s, const char *e, const char *key, char *out, size_t cap) {
    const char *p = json_find(s, e, key);
    if (!p || p >= e || *p != '"' || cap == 0) return -1;
    char *o = out, *oend = out + cap - 1;
    for (++p; p < e && *p != '"'; ++p) {
        if (*p != '\\') { if (o < oend) *o++ = *p; continue; }
        if (++p >= e) break;
        switch (*p) {
            case 'n': put_utf8(&o, oend, '\n'); break;
            case 't': put_utf8(&o, oend, '\t'); break;
            case 'r': put_utf8(&o, oend, '\r'); break;
            case 'b': put_utf8(&o, oend, '\b'); break;
            case 'f': put_utf8(&o, oend, '\f'); break;
            case 'u': {
                unsigned cp = 0;
                if (e - p < 5 || sscanf(p + 1, "%4x", &cp) != 1) goto done;
                p += 4;
                if (cp >= 0xD800 && cp < 0xDC00 && e - p >= 7 && p[1] == '\\' && p[2] == 'u') {
                    unsigned lo = 0;
                    if (sscanf(p + 3, "%4x", &lo) == 1 && lo >= 0xDC00 && lo < 0xE000) {
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                        p += 6;
                    }
                }
                put_utf8(&o, oend, cp);
                break;
            }
            default: put_utf8(&o, oend, (unsigned char)*p);
        }
    }
done:
    *o = 0;
    return 0;
}

static int json_long(const char *s, const char *e, const char *key, long *out) {
    const char *p = json_find(s, e, key);
    if (!p) return -1;
    char tmp[32];
    size_t k = 0;
    while (p < e && k + 1 < sizeof tmp && (*p == '-' || (*p >= '0' && *p <= '9'))) tmp[k++] = *p++;
    tmp[k] = 0;
    if (!k) return -1;
    *out = strtol(tmp, NULL, 10);
    return 0;
}

/* ------------------------------------------------------------------ framing */
static int send_all(int fd, const void *data, size_t n) {
    const char *p = data;
    while (n) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static int recv_all(int fd, void *data, size_t n) {
    char *p = data;
    while (n) {
        ssize_t k = recv(fd, p, n, 0);
        if (k < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (k == 0) { errno = ECONNRESET; return -1; }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static void put_be(unsigned char *p, uint64_t v, int k) {
    for (int i = k - 1; i >= 0; --i) { p[i] = (unsigned char)(v & 0xFF); v >>= 8; }
}

static uint64_t get_be(const unsigned char *p, int k) {
    uint64_t v = 0;
    for (int i = 0; i < k; ++i) v = (v << 8) | p[i];
    return v;
}

static int send_frame(int fd, const char *head, size_t n_head, const void *payload, size_t n_payload) {
    unsigned char prefix[16];
    memcpy(prefix, "PDS1", 4);
    put_be(prefix + 4, n_head, 4);
    put_be(prefix + 8, n_payload, 8);
    if (send_all(fd, prefix, 16) || send_all(fd, head, n_head)) return -1;
    return n_payload ? send_all(fd, payload, n_payload) : 0;
}

/* 1 when fd has data within timeout seconds (< 0: forever), 0 on timeout, -1 on error. */
static int wait_readable(int fd, double timeout) {
    double deadline = now_s() + timeout;
    for (;;) {
        struct pollfd pfd = {fd, POLLIN, 0};
        int ms = timeout < 0 ? -1 : (int)((deadline - now_s()) * 1000.0);
        if (timeout >= 0 && ms < 0) ms = 0;
        int r = poll(&pfd, 1, ms);
        if (r < 0 && errno == EINTR) continue;
        return r < 0 ? -1 : (r > 0);
    }
}

/* Read one frame from the job into *head (malloc'd, NUL-terminated). */
static int read_frame(pds_client *c, char **head, size_t *n_head) {
    unsigned char prefix[16];
    if (recv_all(c->fd, prefix, 16))
        return fail(PDS_E_STOPPED, "lost the connection to the training job at %s (%s); it finished, was "
                    "interrupted or crashed", c->address, strerror(errno));
    uint64_t nh = get_be(prefix + 4, 4), np = get_be(prefix + 8, 8);
    if (memcmp(prefix, "PDS1", 4) != 0 || nh > (uint64_t)PDS_MAX_REPLY_HEADER || np != 0)
        return fail(PDS_E_PROTOCOL, "%s does not answer in the pdestream protocol; is it a pdestream train job?",
                    c->address);
    char *h = malloc((size_t)nh + 1);
    if (!h) return fail(PDS_E_NOMEM, "out of memory reading an answer of %lu bytes", (unsigned long)nh);
    if (recv_all(c->fd, h, (size_t)nh)) {
        free(h);
        return fail(PDS_E_STOPPED, "lost the connection to the training job at %s (%s); it finished, was "
                    "interrupted or crashed", c->address, strerror(errno));
    }
    h[nh] = 0;
    *head = h;
    *n_head = (size_t)nh;
    return PDS_OK;
}

/* Wait up to `timeout` s for one answer of the job and act on it. */
static int read_one(pds_client *c, double timeout, const char *what) {
    int r = wait_readable(c->fd, timeout);
    if (r == 0)
        return fail(PDS_E_TIMEOUT, "%s: no answer from the training job at %s within %g s (the trainer is slower "
                    "than the solver, or stalled); raise PDESTREAM_SEND_TIMEOUT or unset it to wait as long as it "
                    "takes", what, c->address, timeout);
    char *h = NULL;
    size_t nh = 0;
    int rc = r < 0 ? fail(PDS_E_STOPPED, "%s: poll failed (%s)", what, strerror(errno)) : read_frame(c, &h, &nh);
    if (rc != PDS_OK) return die(c, rc);
    char type[32] = "", msg[900] = "";
    long n = 1;
    json_string(h, h + nh, "type", type, sizeof type);
    json_string(h, h + nh, "message", msg, sizeof msg);
    if (!strcmp(type, "ack")) {
        json_long(h, h + nh, "n", &n);
        c->unacked -= (int)n;
    } else if (!strcmp(type, "bye")) {
        c->bye = 1;
    } else if (!strcmp(type, "dropped")) {
        c->dropped = 1;
        c->n = 0;
        c->cur = -1;
        fail(PDS_DROPPED, "the training job at %s dropped simulation %ld: %s", c->address, c->sim_id, msg);
    } else if (!strcmp(type, "error")) {
        fail(PDS_E_REJECTED, "the training job at %s rejected simulation %ld: %s", c->address, c->sim_id, msg);
        rc = die(c, PDS_E_REJECTED);
    } else if (!strcmp(type, "stop")) {
        fail(PDS_E_STOPPED, "the training job at %s stopped: %s", c->address, msg);
        rc = die(c, PDS_E_STOPPED);
    }
    free(h);
    return rc;
}

/* ------------------------------------------------------------------ connect */
static int parse_address(const char *address, char **token, char *host, size_t host_cap, char *port,
                         size_t port_cap) {
    const char *at = strrchr(address, '@');
    const char *hp = at ? at + 1 : address;
    *token = NULL;
    if (at) {
        *token = strndup(address, (size_t)(at - address));
        if (!*token) return fail(PDS_E_NOMEM, "out of memory");
    }
    const char *colon = strrchr(hp, ':');
    if (!colon || !colon[1] || strspn(colon + 1, "0123456789") != strlen(colon + 1) || strlen(colon + 1) > 5 ||
        atol(colon + 1) > 65535)
        return fail(PDS_E_CONNECT, "address '%s': expected HOST:PORT (or TOKEN@HOST:PORT) with a port in 0..65535, "
                    "e.g. %s", address, PDS_DEFAULT_ADDRESS);
    const char *h0 = hp, *h1 = colon;
    if (h1 > h0 && *h0 == '[' && h1[-1] == ']') { ++h0; --h1; }
    if ((size_t)(h1 - h0) >= host_cap) return fail(PDS_E_CONNECT, "address '%s': host name too long", address);
    if (h1 == h0) snprintf(host, host_cap, "127.0.0.1");
    else { memcpy(host, h0, (size_t)(h1 - h0)); host[h1 - h0] = 0; }
    snprintf(port, port_cap, "%s", colon + 1);
    return PDS_OK;
}

static int open_socket(const char *host, const char *port, const char *address, double timeout) {
    double deadline = now_s() + timeout;
    for (;;) {
        struct addrinfo hints, *res = NULL;
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        int gai = getaddrinfo(host, port, &hints, &res);
        if (gai) {
            fail(PDS_E_CONNECT, "cannot connect to %s (%s); fix the address", address, gai_strerror(gai));
            return -1;
        }
        int fd = -1, err = 0;
        for (struct addrinfo *a = res; a; a = a->ai_next) {
            fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
            if (fd < 0) { err = errno; continue; }
            if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) break;
            err = errno;
            close(fd);
            fd = -1;
        }
        freeaddrinfo(res);
        if (fd >= 0) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
#ifdef SO_NOSIGPIPE
            setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof one); /* no MSG_NOSIGNAL there */
#endif
            return fd;
        }
        if (err != ECONNREFUSED && err != ETIMEDOUT && err != EAGAIN) {
            fail(PDS_E_CONNECT, "cannot connect to %s (%s); fix the address", address, strerror(err));
            return -1;
        }
        if (now_s() >= deadline) {
            fail(PDS_E_CONNECT, "no pdestream train job listening at %s after %g s (%s); start `pdestream train` "
                 "with workers.backend='external' first, fix the address, or raise PDESTREAM_CONNECT_TIMEOUT",
                 address, timeout, strerror(err));
            return -1;
        }
        struct timespec ts = {0, 100000000L};
        nanosleep(&ts, NULL);
    }
}

/* Connections kept after a simulation's "bye" (jobs that announce "reuse" in their welcome): the next
   pds_connect to the same address sends its hello there instead of opening a connection (per thread). */
#define PDS_POOL 4
static _Thread_local struct { int fd; char key[512]; } g_pool[PDS_POOL];
static _Thread_local int g_pool_n;

static int pool_take(const char *key) {
    for (int i = g_pool_n - 1; i >= 0; --i)
        if (!strcmp(g_pool[i].key, key)) {
            int fd = g_pool[i].fd;
            g_pool[i] = g_pool[--g_pool_n];
            return fd;
        }
    return -1;
}

static void pool_keep(pds_client *c) {
    if (c->fd >= 0 && c->reuse && !c->dead && c->pool_key && strlen(c->pool_key) < sizeof g_pool[0].key &&
        g_pool_n < PDS_POOL) {
        g_pool[g_pool_n].fd = c->fd;
        snprintf(g_pool[g_pool_n].key, sizeof g_pool[0].key, "%s", c->pool_key);
        ++g_pool_n;
        c->fd = -1;
    }
}

static void free_client(pds_client *c) {
    if (!c) return;
    close_fd(c);
    free(c->pool_key);
    if (c->fields)
        for (int i = 0; i < c->n_fields; ++i) free(c->fields[i]);
    free(c->fields);
    free(c->address);
    free(c->grid);
    free(c->offset);
    free(c->local);
    free(c->params);
    free(c->buf);
    free(c->frame_index);
    free(c->have);
    free(c);
}

static long *copy_longs(const long *v, int n) {
    long *o = malloc(sizeof(long) * (size_t)(n ? n : 1));
    if (o && n) memcpy(o, v, sizeof(long) * (size_t)n);
    return o;
}

static pds_client *connect_impl(const char *address, long sim_id, int n_params, const double *params,
                                int n_fields, const char **fields, int ndim, const long *grid,
                                const long *offset, const long *local_shape, int n_ranks) {
    g_err[0] = 0;
    g_code = PDS_OK;
    /* ---- argument checks (no connection yet) */
    if (sim_id < 0) { fail(PDS_E_ARG, "pds_connect: sim_id=%ld must be >= 0", sim_id); return NULL; }
    if (n_params < 0 || (n_params && !params)) {
        fail(PDS_E_ARG, "pds_connect: n_params=%d with params %s; pass n_params >= 0 values", n_params,
             params ? "given" : "NULL");
        return NULL;
    }
    for (int i = 0; i < n_params; ++i)
        if (!isfinite(params[i])) { fail(PDS_E_ARG, "pds_connect: params[%d] is not finite", i); return NULL; }
    if (n_fields < 1 || !fields) { fail(PDS_E_ARG, "pds_connect: pass n_fields >= 1 field names"); return NULL; }
    for (int i = 0; i < n_fields; ++i) {
        if (!fields[i] || !fields[i][0]) { fail(PDS_E_ARG, "pds_connect: fields[%d] is empty or NULL", i); return NULL; }
        for (int j = 0; j < i; ++j)
            if (!strcmp(fields[i], fields[j])) {
                fail(PDS_E_ARG, "pds_connect: field name '%s' appears twice; names must be unique", fields[i]);
                return NULL;
            }
    }
    if (ndim < 0 || (ndim && !grid)) { fail(PDS_E_ARG, "pds_connect: ndim=%d needs a grid of ndim sizes", ndim); return NULL; }
    for (int i = 0; i < ndim; ++i)
        if (grid[i] < 1) { fail(PDS_E_ARG, "pds_connect: grid[%d]=%ld must be >= 1", i, grid[i]); return NULL; }
    if (n_ranks < 1) { fail(PDS_E_ARG, "pds_connect_slab: n_ranks=%d must be >= 1", n_ranks); return NULL; }
    if (offset) {
        if (ndim && !local_shape) { fail(PDS_E_ARG, "pds_connect_slab: local_shape is NULL"); return NULL; }
        for (int i = 0; i < ndim; ++i)
            if (offset[i] < 0 || local_shape[i] < 1 || offset[i] + local_shape[i] > grid[i]) {
                fail(PDS_E_ARG, "pds_connect_slab: slab of shape %ld at offset %ld leaves the grid (%ld) on axis %d; "
                     "fix offset or local_shape", local_shape[i], offset[i], grid[i], i);
                return NULL;
            }
    }
    const char *env_addr = getenv("PDESTREAM_ADDRESS");
    if (!address || !*address) address = (env_addr && *env_addr) ? env_addr : PDS_DEFAULT_ADDRESS;
    char host[256], port[8];
    char *token = NULL;
    if (parse_address(address, &token, host, sizeof host, port, sizeof port) != PDS_OK) return NULL;
    if (!token) {
        const char *t = getenv("PDESTREAM_TOKEN");
        if (t && *t && !(token = strdup(t))) { fail(PDS_E_NOMEM, "out of memory"); return NULL; }
    }

    pds_client *c = calloc(1, sizeof *c);
    if (!c) { free(token); fail(PDS_E_NOMEM, "out of memory"); return NULL; }
    c->fd = -1;
    c->sim_id = sim_id;
    c->n_fields = n_fields;
    c->ndim = ndim;
    c->n_params = n_params;
    c->cur = c->last = -1;
    const char *at = strrchr(address, '@');
    c->address = strdup(at ? at + 1 : address);
    c->pool_key = strdup(address);
    c->fields = calloc((size_t)n_fields, sizeof(char *));
    c->grid = copy_longs(grid, ndim);
    c->local = copy_longs(offset ? local_shape : grid, ndim);
    c->offset = offset ? copy_longs(offset, ndim) : NULL;
    c->params = malloc(sizeof(double) * (size_t)(n_params ? n_params : 1));
    c->have = calloc((size_t)n_fields, 1);
    int oom = !c->address || !c->pool_key || !c->fields || !c->grid || !c->local || (offset && !c->offset) ||
              !c->params || !c->have;
    for (int i = 0; !oom && i < n_fields; ++i) oom = !(c->fields[i] = strdup(fields[i]));
    if (oom) { free(token); free_client(c); fail(PDS_E_NOMEM, "out of memory"); return NULL; }
    if (n_params) memcpy(c->params, params, sizeof(double) * (size_t)n_params);
    c->cells = 1;
    for (int i = 0; i < ndim; ++i) c->cells *= (size_t)c->local[i];
    size_t frame_bytes = 4 * (size_t)n_fields * c->cells;
    const char *bs = getenv("PDESTREAM_BATCH_STEPS");
    long batch = bs && atol(bs) > 0 ? atol(bs) : (long)(PDS_AUTO_BATCH_BYTES / frame_bytes);
    if (!(bs && atol(bs) > 0) && batch > PDS_MAX_AUTO_BATCH) batch = PDS_MAX_AUTO_BATCH;
    c->batch = batch < 1 ? 1 : (int)batch;
    c->buf = malloc(frame_bytes * (size_t)c->batch);
    c->frame_index = malloc(sizeof(long) * (size_t)c->batch);
    if (!c->buf || !c->frame_index) { free(token); free_client(c); fail(PDS_E_NOMEM, "out of memory for %d frames", c->batch); return NULL; }
    c->send_timeout = env_seconds("PDESTREAM_SEND_TIMEOUT", -1.0);
    double timeout = env_seconds("PDESTREAM_CONNECT_TIMEOUT", 30.0);

    /* ---- hello */
    sbuf h = {0};
    sb_fmt(&h, "{\"type\":\"hello\",\"protocol\":%d,\"sim_id\":%ld,\"params\":[", PDS_PROTOCOL, sim_id);
    for (int i = 0; i < n_params; ++i) sb_fmt(&h, i ? ",%.17g" : "%.17g", params[i]);
    sb_str(&h, "],\"fields\":[");
    for (int i = 0; i < n_fields; ++i) { if (i) sb_str(&h, ","); sb_json_string(&h, fields[i]); }
    sb_str(&h, "],\"grid\":");
    sb_longs(&h, grid, ndim);
    sb_str(&h, ",\"offset\":");
    if (offset) sb_longs(&h, offset, ndim); else sb_str(&h, "null");
    sb_fmt(&h, ",\"ranks\":%d,\"solver\":\"c-client\"", n_ranks);
    if (token) { sb_str(&h, ",\"token\":"); sb_json_string(&h, token); }
    sb_str(&h, "}");
    free(token);
    if (h.oom) { free(h.s); free_client(c); fail(PDS_E_NOMEM, "out of memory"); return NULL; }

    double answer = timeout < 10.0 ? 10.0 : timeout; /* a short connect timeout still leaves the job time to answer */
    char *ans = NULL;
    size_t na = 0;
    for (;;) { /* a kept connection first; one the job let go (or that broke) is replaced by a new one */
        c->fd = pool_take(address);
        int kept = c->fd >= 0;
        if (!kept && (c->fd = open_socket(host, port, c->address, timeout)) < 0) {
            free(h.s);
            free_client(c);
            return NULL;
        }
        if (send_frame(c->fd, h.s, h.n, NULL, 0)) {
            if (kept) { close_fd(c); continue; }
            fail(PDS_E_STOPPED, "the training job at %s closed the connection during the handshake (%s)", c->address,
                 strerror(errno));
            free(h.s);
            free_client(c);
            return NULL;
        }
        int r = wait_readable(c->fd, answer);
        if (r <= 0) {
            fail(PDS_E_TIMEOUT, "%s accepted the connection but did not answer within %g s; is it a pdestream train "
                 "job?", c->address, answer);
            free(h.s);
            free_client(c);
            return NULL;
        }
        if (read_frame(c, &ans, &na) == PDS_OK) break;
        if (kept) { close_fd(c); continue; }
        if (g_code == PDS_E_STOPPED)
            fail(PDS_E_STOPPED, "the training job at %s closed the connection during the handshake", c->address);
        free(h.s);
        free_client(c);
        return NULL;
    }
    free(h.s);
    g_err[0] = 0;
    g_code = PDS_OK;
    char type[32] = "", msg[900] = "";
    long window = 0;
    json_string(ans, ans + na, "type", type, sizeof type);
    json_string(ans, ans + na, "message", msg, sizeof msg);
    json_long(ans, ans + na, "max_inflight", &window);
    const char *reuse = json_find(ans, ans + na, "reuse");
    c->reuse = reuse && (size_t)(ans + na - reuse) >= 4 && !strncmp(reuse, "true", 4);
    free(ans);
    if (strcmp(type, "welcome") != 0) {
        if (!strcmp(type, "stop")) fail(PDS_E_STOPPED, "the training job at %s is stopping: %s", c->address, msg);
        else fail(PDS_E_REFUSED, "the training job at %s refused simulation %ld: %s", c->address, sim_id,
                  *msg ? msg : "unexpected answer");
        free_client(c);
        return NULL;
    }
    c->window = window > 0 ? (int)window : 1;
    return c;
}

pds_client *pds_connect(const char *address, long sim_id, int n_params, const double *params, int n_fields,
                        const char **fields, int ndim, const long *grid) {
    return connect_impl(address, sim_id, n_params, params, n_fields, fields, ndim, grid, NULL, NULL, 1);
}

pds_client *pds_connect_slab(const char *address, long sim_id, int n_params, const double *params, int n_fields,
                             const char **fields, int ndim, const long *grid, const long *offset,
                             const long *local_shape, int n_ranks) {
    if (!offset) {
        fail(PDS_E_ARG, "pds_connect_slab: offset is NULL; use pds_connect for a whole-grid client");
        return NULL;
    }
    return connect_impl(address, sim_id, n_params, params, n_fields, fields, ndim, grid, offset, local_shape,
                        n_ranks);
}

/* ------------------------------------------------------------------ sending */
static int little_endian(void) {
    const uint16_t one = 1;
    return *(const unsigned char *)&one == 1;
}

static int ship(pds_client *c) {
    if (!c->n) return PDS_OK;
    while (c->unacked >= c->window && !c->dropped) {
        int rc = read_one(c, c->send_timeout, "pds_send");
        if (rc < 0) return rc;
    }
    if (c->dropped) { c->n = 0; return PDS_OK; }
    sbuf h = {0};
    sb_fmt(&h, "{\"type\":\"chunk\",\"wire\":{\"version\":%d,\"sim_id\":%ld,\"solver\":\"c-client\",\"frame_index\":",
           PDS_WIRE_VERSION, c->sim_id);
    sb_longs(&h, c->frame_index, c->n);
    sb_str(&h, ",\"params\":[");
    for (int i = 0; i < c->n_params; ++i) sb_fmt(&h, i ? ",%.9g" : "%.9g", (double)(float)c->params[i]);
    sb_fmt(&h, "],\"shape\":[%d,%d", c->n, c->n_fields);
    for (int i = 0; i < c->ndim; ++i) sb_fmt(&h, ",%ld", c->local[i]);
    sb_str(&h, "],\"dtype\":\"<f4\",\"offset\":");
    if (c->offset) sb_longs(&h, c->offset, c->ndim);
    else {
        sb_add(&h, "[", 1);
        for (int i = 0; i < c->ndim; ++i) sb_str(&h, i ? ",0" : "0");
        sb_add(&h, "]", 1);
    }
    sb_str(&h, ",\"global_grid\":");
    sb_longs(&h, c->grid, c->ndim);
    sb_str(&h, "}}");
    if (h.oom) { free(h.s); return fail(PDS_E_NOMEM, "out of memory"); }
    size_t values = (size_t)c->n * (size_t)c->n_fields * c->cells;
    if (!little_endian())
        for (size_t i = 0; i < values; ++i) {
            unsigned char *b = (unsigned char *)&c->buf[i], t;
            t = b[0]; b[0] = b[3]; b[3] = t;
            t = b[1]; b[1] = b[2]; b[2] = t;
        }
    int rc = send_frame(c->fd, h.s, h.n, c->buf, values * 4);
    free(h.s);
    if (rc) {
        fail(PDS_E_STOPPED, "lost the connection to the training job at %s (%s); it finished, was interrupted or "
             "crashed", c->address, strerror(errno));
        return die(c, PDS_E_STOPPED);
    }
    c->unacked += 1;
    c->n = 0;
    while (!c->dead && wait_readable(c->fd, 0.0) > 0) { /* acknowledgements and notices already here */
        rc = read_one(c, 0.0, "pds_send");
        if (rc < 0) return rc;
    }
    return PDS_OK;
}

static int check_open(pds_client *c, const char *what) {
    if (!c) return fail(PDS_E_ARG, "%s: the client is NULL (pds_connect failed? see pds_last_error)", what);
    if (c->dead) return fail(c->dead_code, "%s", c->dead_msg);
    if (c->ended && strcmp(what, "pds_close") != 0)
        return fail(PDS_E_ARG, "%s: simulation %ld was already ended with pds_end; only pds_close is left", what,
                    c->sim_id);
    return PDS_OK;
}

static void missing_fields(pds_client *c, char *out, size_t cap) {
    out[0] = 0;
    for (int i = 0; i < c->n_fields; ++i)
        if (!c->have[i]) {
            size_t k = strlen(out);
            snprintf(out + k, cap - k, "%s'%s'", k ? ", " : "", c->fields[i]);
        }
}

static int send_any(pds_client *c, const char *field, long frame, const float *f32, const double *f64,
                    const char *what) {
    int rc = check_open(c, what);
    if (rc) return rc;
    if (!field) return fail(PDS_E_ARG, "%s: field is NULL", what);
    int idx = -1;
    for (int i = 0; i < c->n_fields; ++i)
        if (!strcmp(c->fields[i], field)) idx = i;
    if (idx < 0) {
        char names[512] = "";
        for (int i = 0; i < c->n_fields; ++i) {
            size_t k = strlen(names);
            snprintf(names + k, sizeof names - k, "%s'%s'", i ? ", " : "", c->fields[i]);
        }
        return fail(PDS_E_ARG, "%s(field='%s'): not one of the connected fields [%s]; fix the name or pass it to "
                    "pds_connect", what, field, names);
    }
    if (!f32 && !f64) return fail(PDS_E_ARG, "%s('%s', frame %ld): data is NULL", what, field, frame);
    if (frame < 0) return fail(PDS_E_ARG, "%s('%s', frame %ld): frames are >= 0", what, field, frame);
    char miss[512];
    if (c->cur >= 0 && frame != c->cur) {
        if (frame < c->cur)
            return fail(PDS_E_ARG, "%s('%s', frame %ld): frames go backwards (frame %ld is being sent); send frames "
                        "in increasing order", what, field, frame, c->cur);
        missing_fields(c, miss, sizeof miss);
        return fail(PDS_E_ARG, "%s('%s', frame %ld): frame %ld is missing field(s) [%s]; send every field of a frame "
                    "before the next frame", what, field, frame, c->cur, miss);
    }
    if (c->cur < 0 && c->last >= 0 && frame <= c->last)
        return fail(PDS_E_ARG, "%s('%s', frame %ld): frames go backwards (frame %ld was already sent); send frame %ld "
                    "or later", what, field, frame, c->last, c->last + 1);
    if (c->cur >= 0 && c->have[idx])
        return fail(PDS_E_ARG, "%s('%s', frame %ld): field '%s' of frame %ld was already sent; send each field once "
                    "per frame", what, field, frame, field, frame);
    if (c->dropped) return fail(PDS_DROPPED, "the training job dropped simulation %ld (NaN/Inf); sends are ignored",
                                c->sim_id);
    if (c->cur < 0) {
        if (c->n == c->batch || (c->n && frame != c->last + 1)) {
            rc = ship(c);
            if (rc < 0) return rc;
            if (c->dropped) return fail(PDS_DROPPED, "the training job dropped simulation %ld (NaN/Inf); sends are "
                                        "ignored", c->sim_id);
        }
        c->cur = frame;
        memset(c->have, 0, (size_t)c->n_fields);
        c->have_count = 0;
    }
    float *dst = c->buf + ((size_t)c->n * (size_t)c->n_fields + (size_t)idx) * c->cells;
    if (f32) memcpy(dst, f32, c->cells * sizeof(float));
    else
        for (size_t i = 0; i < c->cells; ++i) dst[i] = (float)f64[i];
    c->have[idx] = 1;
    if (++c->have_count == c->n_fields) {
        c->frame_index[c->n++] = frame;
        c->last = frame;
        c->cur = -1;
        if (c->n == c->batch) {
            rc = ship(c);
            if (rc < 0) return rc;
        }
    }
    if (c->dropped) return fail(PDS_DROPPED, "the training job dropped simulation %ld (NaN/Inf); sends are ignored",
                                c->sim_id);
    return PDS_OK;
}

int pds_send(pds_client *c, const char *field, long frame, const float *data) {
    return send_any(c, field, frame, data ? data : NULL, NULL, "pds_send");
}

int pds_send_f64(pds_client *c, const char *field, long frame, const double *data) {
    if (!data) return send_any(c, field, frame, NULL, NULL, "pds_send_f64");
    return send_any(c, field, frame, NULL, data, "pds_send_f64");
}

/* Flush and send "end" (the simulation is complete); the client stays allocated either way. */
static int end_impl(pds_client *c, const char *what) {
    if (c->cur >= 0 && !c->dropped) {
        char miss[512];
        missing_fields(c, miss, sizeof miss);
        return fail(PDS_E_ARG, "%s: frame %ld is missing field(s) [%s]; the simulation is incomplete and the job "
                    "drops it (send every field of the last frame before %s)", what, c->cur, miss, what);
    }
    int rc;
    if (!c->dropped && (rc = ship(c)) < 0) return rc;
    const char end[] = "{\"type\":\"end\"}";
    if (send_frame(c->fd, end, sizeof end - 1, NULL, 0)) {
        fail(PDS_E_STOPPED, "lost the connection to the training job at %s (%s); it finished, was interrupted or "
             "crashed", c->address, strerror(errno));
        return die(c, PDS_E_STOPPED);
    }
    c->ended = 1;
    return PDS_OK;
}

int pds_end(pds_client *c) {
    int rc = check_open(c, "pds_end");
    if (rc) return rc;
    rc = end_impl(c, "pds_end");
    if (rc == PDS_E_ARG) return die(c, PDS_E_ARG); /* an incomplete frame: the job drops the simulation */
    return rc;
}

int pds_close(pds_client *c) {
    if (!c) return PDS_OK;
    int rc = check_open(c, "pds_close");
    if (rc) { free_client(c); return rc; }
    if (!c->ended && (rc = end_impl(c, "pds_close")) < 0) { free_client(c); return rc; }
    while (!c->bye) {
        rc = read_one(c, c->send_timeout, "pds_close");
        if (rc < 0) { free_client(c); return rc; }
    }
    rc = c->dropped ? fail(PDS_DROPPED, "the training job dropped simulation %ld (it sent NaN/Inf)", c->sim_id)
                    : PDS_OK;
    if (rc == PDS_OK) { g_err[0] = 0; g_code = PDS_OK; }
    pool_keep(c); /* everything was answered: the connection may carry the next simulation */
    free_client(c);
    return rc;
}

void pds_abort(pds_client *c) { free_client(c); }
