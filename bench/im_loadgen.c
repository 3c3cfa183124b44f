/*
 * im_loadgen.c - S7, an instant-messaging load on an MQTT broker.
 *
 * One single-threaded epoll process holds N users, each a persistent QoS 1
 * session (MQTT 5 with a long Session Expiry, or 3.1.1 with CleanSession 0),
 * in G groups whose sizes follow a Zipf rank-size law: the group of rank r
 * has max(2, round(group_max * r^-zipf)) members, drawn uniformly.  By
 * default G = N/4 and group_max = 147 * N / 2,000: for 2,000 users, 500
 * groups of median 3 and largest 147.  At a fixed open-loop rate it
 * publishes QoS 1 messages, a share of them to a random group by a random
 * online member, the rest to a random user by a random online user.  Meanwhile users go offline (DISCONNECT) for --offline-s
 * seconds, so that about --offline-frac of them are away at any moment, and
 * come back without subscribing again: what was sent meanwhile must arrive
 * from their sessions.
 *
 * Two ways to address a group, so two brokers can be compared on one load:
 *   --addr vgroup   publish to $group/gK and $p2p/uK (mqttd's virtual groups;
 *                   the broker is given the groups, see --print-groups); the
 *                   users subscribe to nothing.
 *   --addr topic    every user subscribes to u/K (itself) and g/K for each of
 *                   its groups; publish to g/K and u/K.  With MQTT 5 the
 *                   subscriptions are No Local, so a sender does not get its
 *                   own group message back, as with virtual groups.
 *
 * Payload: [u64 send time, CLOCK_MONOTONIC ns][u32 message id][pad].
 * A delivery is "live" if the message was sent after the recipient's last
 * CONNACK, else "queued" (it waited in the session while the user was away).
 * Latency percentiles are over live deliveries of messages sent in the
 * measured window; queued deliveries are counted apart.
 *
 * --saturate raises the rate by --step each phase (the same connections)
 * until the live p99 passes --p99-limit-ms or deliveries fall behind, and
 * prints one line per phase and a final line naming the last rate that held.
 *
 *   gcc -O2 -Wall -o im_loadgen im_loadgen.c -lm
 *   im_loadgen --print-groups > groups.ini   # [plugin:virtual_groups] lines
 *   im_loadgen -p 1883 --addr vgroup --broker-pid PID
 *
 * Output: one line of key=value pairs per phase on stdout (after --label).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

static struct {
    const char *host, *src_base, *label;
    int port, users, groups, group_max, size, proto, topic_addr, src_addrs;
    int window, concurrency, broker_pid, print_groups, saturate, verbose;
    double zipf, rate, group_frac, offline_frac, offline_s;
    double warmup_s, measure_s, drain_s, setup_timeout_s;
    double step, p99_limit_ms, max_rate;
    uint64_t seed;
} opt = {
    .host = "127.0.0.1", .src_base = "127.0.0.2", .label = "",
    .port = 1883, .users = 2000, .groups = 0, .group_max = 0, .size = 64, .proto = 5,
    .topic_addr = 0, .src_addrs = 0, .window = 32, .concurrency = 100,
    .zipf = 0.705, .rate = 2000, .group_frac = 0.8, .offline_frac = 0.1, .offline_s = 10,
    .warmup_s = 5, .measure_s = 15, .drain_s = 15, .setup_timeout_s = 120,
    .step = 1.25, .p99_limit_ms = 50, .max_rate = 1e6, .seed = 1,
};

/* ---------------------------------------------------------------- utils */
static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "im_loadgen: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

static void vlog(const char *fmt, ...)
{
    if (!opt.verbose) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "[im_loadgen] ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

static uint64_t rng_state;
static inline uint64_t rnd(void)   /* xorshift64* */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}
static inline uint32_t rnd_below(uint32_t n) { return (uint32_t)((rnd() >> 32) % n); }

/* log-linear histogram, as in ../shared/bench/mqtt_loadgen.c (~1.6 % buckets) */
#define SUB_BITS 6
#define SUB_N (1 << SUB_BITS)
#define HIST_N (64 * SUB_N)
typedef struct { uint64_t b[HIST_N]; uint64_t n, max; } hist_t;
static inline int hist_idx(uint64_t v)
{
    if (v < SUB_N) return (int)v;
    int msb = 63 - __builtin_clzll(v);
    int shift = msb - SUB_BITS;
    return ((shift + 1) << SUB_BITS) + (int)((v >> shift) & (SUB_N - 1));
}
static inline uint64_t hist_val(int i)
{
    if (i < SUB_N) return (uint64_t)i;
    int shift = (i >> SUB_BITS) - 1;
    uint64_t m = (uint64_t)(i & (SUB_N - 1)) | SUB_N;
    return (m << shift) + ((1ull << shift) >> 1);
}
static inline void hist_add(hist_t *h, uint64_t v)
{
    h->b[hist_idx(v)]++;
    h->n++;
    if (v > h->max) h->max = v;
}
static double hist_pct(const hist_t *h, double p)
{
    if (!h->n) return 0;
    uint64_t want = (uint64_t)ceil(p / 100.0 * (double)h->n), acc = 0;
    if (want < 1) want = 1;
    for (int i = 0; i < HIST_N; i++) {
        acc += h->b[i];
        if (acc >= want) {
            uint64_t v = hist_val(i);
            return (double)(v > h->max ? h->max : v);
        }
    }
    return (double)h->max;
}

static double proc_sys_s;   /* the system (kernel) part of the last proc_cpu_s() */
static double proc_cpu_s(int pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    unsigned long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return -1;
    proc_sys_s = (double)st / (double)sysconf(_SC_CLK_TCK);
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}
static long proc_rss_kb(int pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) { kb = atol(line + 6); break; }
    fclose(f);
    return kb;
}
static unsigned long long tasks_ticks(void)   /* user+nice+system of all CPUs */
{
    char line[512];
    unsigned long long v[3] = {0};
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return 0;
    if (fgets(line, sizeof line, f)) sscanf(line, "cpu %llu %llu %llu", &v[0], &v[1], &v[2]);
    fclose(f);
    return v[0] + v[1] + v[2];
}
static double self_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* ---------------------------------------------------------------- model */
/* ST_CLOSING: DISCONNECT sent and our side shut, reading (and dropping) until the
 * broker closes, so no unread byte turns close() into a RST that would discard what
 * we wrote last (our PUBACKs, a last PUBLISH) */
enum { ST_OFF, ST_CONNECTING, ST_WAIT_CONNACK, ST_WAIT_SUBACK, ST_READY, ST_CLOSING };

typedef struct {
    int fd;
    uint8_t st, want_out, ever_ready;
    uint8_t *rbuf; uint32_t rlen, rcap;
    uint8_t *wbuf; uint32_t woff, wlen, wcap;
    uint32_t inflight_mask;      /* packet ids 1..32 in use (bit id-1) */
    uint64_t pid_ts[32];
    uint64_t online_since;       /* CONNACK time of the current connection */
    uint64_t back_at;            /* ST_OFF: when to reconnect (0 = stay) */
    uint64_t t_open;
    uint32_t *grp; uint16_t ngrp, grpcap;
} user_t;

typedef struct { uint32_t *m; uint32_t n; } group_t;

static user_t *users;
static group_t *groups;
static int ep;
static struct sockaddr_in broker_addr;
static uint32_t src_base_h;
static volatile sig_atomic_t g_stop;

/* per message: recipients expected and received (for loss and duplicates) */
static uint16_t *msg_expected, *msg_received;
static uint32_t msg_cap, msg_next;

static uint64_t g_sent, g_expected, g_recv, g_recv_unique, g_recv_live, g_recv_queued, g_acked;
static uint64_t g_errors, g_proto_err, g_closed_by_peer, g_skipped, g_pending, g_offline, g_forced;
static uint64_t win_lo, win_hi;       /* send-time window whose latency counts */
static hist_t h_live, h_queued, h_ack;

static void on_sig(int s) { (void)s; g_stop = 1; }

static void build_groups(void)
{
    if (opt.groups <= 0) opt.groups = opt.users / 4 > 0 ? opt.users / 4 : 1;
    if (opt.group_max <= 0) opt.group_max = (int)lround(147.0 * opt.users / 2000);
    groups = calloc((size_t)opt.groups, sizeof *groups);
    uint8_t *taken = calloc((size_t)opt.users, 1);
    for (int g = 0; g < opt.groups; g++) {
        long n = lround(opt.group_max * pow(g + 1, -opt.zipf));
        if (n < 2) n = 2;
        if (n > opt.users) n = opt.users;
        groups[g].m = malloc(sizeof(uint32_t) * (size_t)n);
        groups[g].n = (uint32_t)n;
        for (long k = 0; k < n; k++) {
            uint32_t u;
            do u = rnd_below((uint32_t)opt.users); while (taken[u]);
            taken[u] = 1;
            groups[g].m[k] = u;
            user_t *us = &users[u];
            if (us->ngrp == us->grpcap) {
                us->grpcap = us->grpcap ? us->grpcap * 2 : 4;
                us->grp = realloc(us->grp, sizeof(uint32_t) * us->grpcap);
            }
            us->grp[us->ngrp++] = (uint32_t)g;
        }
        for (long k = 0; k < n; k++) taken[groups[g].m[k]] = 0;
    }
    free(taken);
}

/* ---------------------------------------------------------------- wire */
static void wreserve(user_t *c, uint32_t extra)
{
    if (c->woff && c->woff == c->wlen) c->woff = c->wlen = 0;
    if (c->wlen + extra <= c->wcap) return;
    if (c->woff) {
        memmove(c->wbuf, c->wbuf + c->woff, c->wlen - c->woff);
        c->wlen -= c->woff;
        c->woff = 0;
        if (c->wlen + extra <= c->wcap) return;
    }
    uint32_t ncap = c->wcap ? c->wcap : 256;
    while (ncap < c->wlen + extra) ncap *= 2;
    c->wbuf = realloc(c->wbuf, ncap);
    if (!c->wbuf) die("out of memory");
    c->wcap = ncap;
}
static inline int put_varint(uint8_t *p, uint32_t v)
{
    int n = 0;
    do {
        uint8_t b = v % 128;
        v /= 128;
        if (v) b |= 0x80;
        p[n++] = b;
    } while (v);
    return n;
}
static inline void put_u16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline uint32_t uid(user_t *c) { return (uint32_t)(c - users); }

static void ep_set(user_t *c, int out)
{
    struct epoll_event ev = { .events = EPOLLIN | (out ? EPOLLOUT : 0), .data.u32 = uid(c) };
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl: %s", strerror(errno));
    c->want_out = (uint8_t)out;
}

static void conn_close(user_t *c, int failed)
{
    if (c->fd >= 0) { epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL); close(c->fd); }
    if (c->st != ST_READY && c->st != ST_OFF && c->st != ST_CLOSING) g_pending--;
    if (failed) {
        g_closed_by_peer++;
        vlog("user %u closed in state %d", uid(c), c->st);
    }
    c->fd = -1;
    c->st = ST_OFF;
    c->rlen = c->woff = c->wlen = 0;
    c->inflight_mask = 0;
}

static int conn_flush(user_t *c)
{
    while (c->woff < c->wlen) {
        ssize_t n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);
        if (n > 0) { c->woff += (uint32_t)n; continue; }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!c->want_out) ep_set(c, 1);
            return 0;
        }
        g_errors++;
        conn_close(c, 1);
        return -1;
    }
    c->woff = c->wlen = 0;
    if (c->want_out) ep_set(c, 0);
    return 0;
}

static void queue_connect(user_t *c)
{
    char cid[24];
    int cl = snprintf(cid, sizeof cid, "u%u", uid(c));
    /* v5: properties = Session Expiry Interval (0x11) 1 day */
    uint32_t props = opt.proto == 5 ? 5 : 0;
    uint32_t rl = 10 + (opt.proto == 5 ? 1 + props : 0) + 2 + (uint32_t)cl;
    wreserve(c, rl + 5);
    uint8_t *p = c->wbuf + c->wlen;
    int n = 0;
    p[n++] = 0x10;
    n += put_varint(p + n, rl);
    put_u16(p + n, 4); n += 2;
    memcpy(p + n, "MQTT", 4); n += 4;
    p[n++] = (uint8_t)opt.proto;
    p[n++] = 0x00;                       /* CleanSession / Clean Start 0 */
    put_u16(p + n, 300); n += 2;         /* keepalive: PINGREQ every 100 s */
    if (opt.proto == 5) {
        p[n++] = (uint8_t)props;
        p[n++] = 0x11;
        p[n++] = 0; p[n++] = 1; p[n++] = 0x51; p[n++] = 0x80;   /* 86,400 s */
    }
    put_u16(p + n, (uint16_t)cl); n += 2;
    memcpy(p + n, cid, (size_t)cl); n += cl;
    c->wlen += (uint32_t)n;
}

/* topic addressing: every user takes u/ID and g/ID of each of its groups */
static void queue_subscribe(user_t *c)
{
    char f[24];
    uint32_t rl = 2 + (opt.proto == 5 ? 1 : 0);
    for (int k = -1; k < c->ngrp; k++)
        rl += 2 + (uint32_t)snprintf(f, sizeof f, k < 0 ? "u/%u" : "g/%u", k < 0 ? uid(c) : c->grp[k]) + 1;
    wreserve(c, rl + 5);
    uint8_t *p = c->wbuf + c->wlen;
    int n = 0;
    p[n++] = 0x82;
    n += put_varint(p + n, rl);
    put_u16(p + n, 1); n += 2;
    if (opt.proto == 5) p[n++] = 0;
    for (int k = -1; k < c->ngrp; k++) {
        int fl = snprintf(f, sizeof f, k < 0 ? "u/%u" : "g/%u", k < 0 ? uid(c) : c->grp[k]);
        put_u16(p + n, (uint16_t)fl); n += 2;
        memcpy(p + n, f, (size_t)fl); n += fl;
        p[n++] = opt.proto == 5 ? 0x05 : 0x01;   /* QoS 1 (+ No Local at 5) */
    }
    c->wlen += (uint32_t)n;
}

static void queue_2(user_t *c, uint8_t a, uint8_t b)
{
    wreserve(c, 2);
    c->wbuf[c->wlen++] = a;
    c->wbuf[c->wlen++] = b;
}

static void queue_publish(user_t *c, int group, uint32_t to, uint64_t ts)
{
    char topic[32];
    int tl = opt.topic_addr ? snprintf(topic, sizeof topic, group ? "g/%u" : "u/%u", to)
                            : snprintf(topic, sizeof topic, group ? "$group/g%u" : "$p2p/u%u", to);
    uint32_t rl = 2 + (uint32_t)tl + 2 + (opt.proto == 5 ? 1 : 0) + (uint32_t)opt.size;
    wreserve(c, rl + 5);
    int slot = __builtin_ctz(~c->inflight_mask);
    c->inflight_mask |= 1u << slot;
    c->pid_ts[slot] = ts;
    uint8_t *p = c->wbuf + c->wlen;
    int n = 0;
    p[n++] = 0x32;
    n += put_varint(p + n, rl);
    put_u16(p + n, (uint16_t)tl); n += 2;
    memcpy(p + n, topic, (size_t)tl); n += tl;
    put_u16(p + n, (uint16_t)(slot + 1)); n += 2;
    if (opt.proto == 5) p[n++] = 0;
    uint32_t id = msg_next++;
    memcpy(p + n, &ts, 8);
    memcpy(p + n + 8, &id, 4);
    memset(p + n + 12, 'x', (size_t)opt.size - 12);
    n += opt.size;
    c->wlen += (uint32_t)n;
}

static void conn_open(user_t *c)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) { g_errors++; vlog("socket: %s", strerror(errno)); return; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (opt.src_addrs > 0) {
        struct sockaddr_in src = { .sin_family = AF_INET };
        src.sin_addr.s_addr = htonl(src_base_h + uid(c) % (uint32_t)opt.src_addrs);
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) {
            g_errors++; vlog("bind: %s", strerror(errno)); close(fd); return;
        }
    }
    if (connect(fd, (struct sockaddr *)&broker_addr, sizeof broker_addr) < 0 && errno != EINPROGRESS) {
        g_errors++; vlog("connect: %s", strerror(errno)); close(fd); return;
    }
    c->fd = fd;
    c->st = ST_CONNECTING;
    c->t_open = now_ns();
    g_pending++;
    struct epoll_event ev = { .events = EPOLLOUT | EPOLLIN, .data.u32 = uid(c) };
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl add: %s", strerror(errno));
    c->want_out = 1;
}

static void became_ready(user_t *c, uint64_t now)
{
    c->st = ST_READY;
    c->ever_ready = 1;
    c->online_since = now;
    g_pending--;
}

static void handle_packet(user_t *c, uint8_t h, const uint8_t *p, uint32_t rl, uint64_t now)
{
    switch (h >> 4) {
    case 2: /* CONNACK */
        if (c->st != ST_WAIT_CONNACK || rl < 2 || p[1] != 0) {
            vlog("user %u: CONNACK rc=%d", uid(c), rl >= 2 ? p[1] : -1);
            g_proto_err++; conn_close(c, 1); return;
        }
        if (opt.topic_addr && !c->ever_ready) {
            queue_subscribe(c);
            c->st = ST_WAIT_SUBACK;
        } else {
            became_ready(c, now);
        }
        break;
    case 9: /* SUBACK */
        if (c->st != ST_WAIT_SUBACK) { g_proto_err++; return; }
        for (uint32_t i = rl - (uint32_t)c->ngrp - 1; i < rl; i++)
            if (p[i] >= 0x80) { vlog("user %u: SUBACK refused", uid(c)); g_proto_err++; }
        became_ready(c, now);
        break;
    case 3: { /* PUBLISH */
        if (rl < 2) { g_proto_err++; return; }
        uint32_t off = 2 + (((uint32_t)p[0] << 8) | p[1]);
        if (((h >> 1) & 3) == 0 || off + 2 > rl) { g_proto_err++; return; }
        uint16_t pid = (uint16_t)((p[off] << 8) | p[off + 1]);
        off += 2;
        if (opt.proto == 5) {   /* skip the properties */
            uint32_t pl = 0, mul = 1;
            while (off < rl) {
                uint8_t b = p[off++];
                pl += (b & 127u) * mul;
                mul *= 128;
                if (!(b & 128)) break;
            }
            off += pl;
        }
        wreserve(c, 4);
        c->wbuf[c->wlen++] = 0x40;
        c->wbuf[c->wlen++] = 2;
        put_u16(c->wbuf + c->wlen, pid);
        c->wlen += 2;
        if (off + 12 > rl) { g_proto_err++; return; }
        uint64_t ts;
        uint32_t id;
        memcpy(&ts, p + off, 8);
        memcpy(&id, p + off + 8, 4);
        g_recv++;
        /* a QoS 1 re-send the client already had counts once towards what was expected */
        if (id < msg_next && ++msg_received[id] <= msg_expected[id]) g_recv_unique++;
        int live = ts >= c->online_since;
        if (live) g_recv_live++; else g_recv_queued++;
        if (ts >= win_lo && ts < win_hi && now >= ts) hist_add(live ? &h_live : &h_queued, now - ts);
        break;
    }
    case 4: { /* PUBACK */
        if (rl < 2) { g_proto_err++; return; }
        uint16_t pid = (uint16_t)((p[0] << 8) | p[1]);
        if (pid < 1 || pid > 32 || !(c->inflight_mask & (1u << (pid - 1)))) { g_proto_err++; return; }
        if (rl >= 3 && p[2] >= 0x80) g_proto_err++;
        c->inflight_mask &= ~(1u << (pid - 1));
        uint64_t ts = c->pid_ts[pid - 1];
        if (ts >= win_lo && ts < win_hi && now >= ts) hist_add(&h_ack, now - ts);
        g_acked++;
        break;
    }
    case 13: /* PINGRESP */
        break;
    case 14: /* DISCONNECT from the server */
        vlog("user %u: server DISCONNECT rc=%d", uid(c), rl ? p[0] : 0);
        g_proto_err++; conn_close(c, 1);
        break;
    default:
        g_proto_err++;
    }
}

static void conn_readable(user_t *c)
{
    if (c->st == ST_CLOSING) {
        uint8_t sink[16384];
        for (;;) {
            ssize_t n = recv(c->fd, sink, sizeof sink, 0);
            if (n > 0) continue;
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
            conn_close(c, 0);
            return;
        }
    }
    for (int iter = 0; iter < 8 && c->fd >= 0; iter++) {
        if (c->rcap - c->rlen < 4096) {
            c->rcap = c->rcap ? c->rcap * 2 : 8192;
            c->rbuf = realloc(c->rbuf, c->rcap);
            if (!c->rbuf) die("out of memory");
        }
        ssize_t n = recv(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen, 0);
        if (n == 0) { conn_close(c, 1); return; }
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            g_errors++; conn_close(c, 1); return;
        }
        c->rlen += (uint32_t)n;
        uint64_t now = now_ns();
        uint32_t off = 0;
        while (c->rlen - off >= 2 && c->fd >= 0) {
            uint32_t rl = 0, mul = 1, i = 1;
            int complete = 0;
            for (; i <= 4 && off + i < c->rlen; i++) {
                uint8_t b = c->rbuf[off + i];
                rl += (b & 127u) * mul;
                mul *= 128;
                if (!(b & 128)) { complete = 1; break; }
            }
            if (!complete) {
                if (i > 4) { g_proto_err++; conn_close(c, 1); return; }
                break;
            }
            uint32_t total = 1 + i + rl;
            if (c->rlen - off < total) break;
            handle_packet(c, c->rbuf[off], c->rbuf + off + 1 + i, rl, now);
            off += total;
        }
        if (c->fd < 0) return;
        if (off) {
            memmove(c->rbuf, c->rbuf + off, c->rlen - off);
            c->rlen -= off;
        }
        if ((uint32_t)n < c->rcap / 2) break;
    }
    if (c->fd >= 0 && c->wlen > c->woff) conn_flush(c);
}

static void conn_event(user_t *c, uint32_t evs)
{
    if (c->fd < 0) return;
    if (c->st == ST_CONNECTING) {
        if (!(evs & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) { vlog("connect %u: %s", uid(c), strerror(err)); g_errors++; conn_close(c, 1); return; }
        queue_connect(c);
        c->st = ST_WAIT_CONNACK;
        conn_flush(c);
        return;
    }
    if (c->st == ST_CLOSING) {   /* EOF, HUP or data to drop: all end up in conn_readable */
        conn_readable(c);
        return;
    }
    if (evs & EPOLLIN) conn_readable(c);
    if (c->fd >= 0 && (evs & EPOLLOUT) && c->want_out) conn_flush(c);
    if (c->fd >= 0 && (evs & (EPOLLERR | EPOLLHUP)) && !(evs & EPOLLIN)) { g_errors++; conn_close(c, 1); }
}

#define MAXEV 1024
static struct epoll_event evbuf[MAXEV];
static void poll_once(int timeout_ms)
{
    int n = epoll_wait(ep, evbuf, MAXEV, timeout_ms);
    if (n < 0) { if (errno == EINTR) return; die("epoll_wait: %s", strerror(errno)); }
    for (int i = 0; i < n; i++) conn_event(&users[evbuf[i].data.u32], evbuf[i].events);
}

/* ---------------------------------------------------------------- load */
static uint32_t *online;     /* ids of READY users, for picking senders */
static uint32_t nonline;

static void collect_online(void)
{
    nonline = 0;
    for (int i = 0; i < opt.users; i++)
        if (users[i].st == ST_READY) online[nonline++] = (uint32_t)i;
}

static int can_send(const user_t *c)
{
    return c->st == ST_READY && !c->want_out && c->inflight_mask != 0xFFFFFFFFu;
}

/* one message: 1 if sent */
static int send_one(uint64_t now)
{
    if (msg_next >= msg_cap) {
        msg_cap = msg_cap ? msg_cap * 2 : 1 << 20;
        msg_expected = realloc(msg_expected, sizeof(uint16_t) * msg_cap);
        msg_received = realloc(msg_received, sizeof(uint16_t) * msg_cap);
        if (!msg_expected || !msg_received) die("out of memory");
        memset(msg_expected + msg_next, 0, sizeof(uint16_t) * (msg_cap - msg_next));
        memset(msg_received + msg_next, 0, sizeof(uint16_t) * (msg_cap - msg_next));
    }
    for (int attempt = 0; attempt < 16; attempt++) {
        if ((double)(rnd() >> 11) / 9007199254740992.0 < opt.group_frac) {
            group_t *g = &groups[rnd_below((uint32_t)opt.groups)];
            user_t *s = &users[g->m[rnd_below(g->n)]];
            if (!can_send(s)) continue;
            msg_expected[msg_next] = (uint16_t)(g->n - 1);
            g_expected += g->n - 1;
            queue_publish(s, 1, (uint32_t)(g - groups), now);
            conn_flush(s);
        } else {
            if (!nonline) return 0;
            user_t *s = &users[online[rnd_below(nonline)]];
            uint32_t to = rnd_below((uint32_t)opt.users - 1);
            if (to >= uid(s)) to++;
            if (!can_send(s)) continue;
            msg_expected[msg_next] = 1;
            g_expected++;
            queue_publish(s, 0, to, now);
            conn_flush(s);
        }
        g_sent++;
        return 1;
    }
    g_skipped++;
    return 0;
}

/* churn: users leave at a rate that keeps offline_frac of them away */
static double churn_credit;
static void churn(uint64_t now, double dt)
{
    for (int i = 0; i < opt.users; i++) {
        user_t *c = &users[i];
        if (c->back_at && now >= c->back_at && c->st == ST_CLOSING) {
            g_forced++;   /* the broker never closed: what we wrote last may be lost */
            conn_close(c, 0);
        }
        if (c->st == ST_OFF && c->back_at && now >= c->back_at) {
            c->back_at = 0;
            g_offline--;
            conn_open(c);
        }
    }
    if (opt.offline_frac <= 0 || opt.offline_s <= 0) return;
    churn_credit += dt * opt.offline_frac * opt.users / opt.offline_s;
    for (int tries = 0; churn_credit >= 1 && tries < 4 * opt.users; tries++) {
        user_t *c = &users[rnd_below((uint32_t)opt.users)];
        if (c->st != ST_READY) continue;
        queue_2(c, 0xE0, 0x00);
        conn_flush(c);
        if (c->fd >= 0) {
            shutdown(c->fd, SHUT_WR);
            if (c->want_out) ep_set(c, 0);
            c->st = ST_CLOSING;
            c->inflight_mask = 0;
        }
        c->back_at = now + (uint64_t)(opt.offline_s * 1e9);
        g_offline++;
        churn_credit -= 1;
    }
}

static void ping_all(void)
{
    for (int i = 0; i < opt.users; i++)
        if (users[i].st == ST_READY) { queue_2(&users[i], 0xC0, 0x00); conn_flush(&users[i]); }
}

typedef struct { uint64_t sent, expected, recv, live, queued, acked; } counts_t;
static counts_t snap(void)
{
    return (counts_t){ g_sent, g_expected, g_recv, g_recv_live, g_recv_queued, g_acked };
}

/* open loop at `rate` for warmup+measure seconds; prints one line; returns
 * 1 if the phase held (live p99 under the limit, deliveries keeping up) */
static int phase(double rate, double warmup_s, double measure_s, int phase_no)
{
    uint64_t t0 = now_ns(), t_meas = t0 + (uint64_t)(warmup_s * 1e9);
    uint64_t t_end = t_meas + (uint64_t)(measure_s * 1e9);
    uint64_t sent0 = g_sent, last = t0, last_ping = t0, last_tick = t0;
    memset(&h_live, 0, sizeof h_live);
    memset(&h_queued, 0, sizeof h_queued);
    memset(&h_ack, 0, sizeof h_ack);
    win_lo = t_meas; win_hi = t_end;
    counts_t c0 = {0};
    double b0 = 0, b0sys = 0, g0 = 0;
    unsigned long long k0 = 0;
    int measuring = 0;
    collect_online();
    while (!g_stop) {
        uint64_t t = now_ns();
        if (!measuring && t >= t_meas) {
            measuring = 1;
            c0 = snap();
            b0 = opt.broker_pid ? proc_cpu_s(opt.broker_pid) : 0;
            b0sys = proc_sys_s;
            g0 = self_cpu_s();
            k0 = tasks_ticks();
        }
        if (t >= t_end) break;
        if (t - last >= 10000000ull) {   /* every 10 ms: churn, senders */
            churn(t, (double)(t - last) / 1e9);
            collect_online();
            last = t;
        }
        if (t - last_ping >= 100000000000ull) { ping_all(); last_ping = t; }
        if (opt.verbose && t - last_tick >= 1000000000ull) {
            vlog("t=%.1f sent=%llu recv=%llu backlog=%lld online=%u", (double)(t - t0) / 1e9,
                 (unsigned long long)g_sent, (unsigned long long)g_recv,
                 (long long)(g_expected - g_recv_unique), nonline);
            last_tick = t;
        }
        int64_t due = (int64_t)((double)(t - t0) / 1e9 * rate) - (int64_t)(g_sent - sent0);
        if (due > 1000) due = 1000;
        for (int64_t k = 0; k < due; k++)
            if (!send_one(t)) break;
        poll_once(1);
    }
    uint64_t t_stop = now_ns();
    counts_t c1 = snap();
    double secs = (double)(t_stop - t_meas) / 1e9;
    double bcpu = opt.broker_pid ? proc_cpu_s(opt.broker_pid) - b0 : 0;
    double bsys = opt.broker_pid ? proc_sys_s - b0sys : 0;
    double gcpu = self_cpu_s() - g0;
    double other = (double)(tasks_ticks() - k0) / (double)sysconf(_SC_CLK_TCK) - bcpu - gcpu;
    long rss = opt.broker_pid ? proc_rss_kb(opt.broker_pid) : -1;
    int64_t backlog = (int64_t)(g_expected - g_recv_unique);
    double p99 = hist_pct(&h_live, 99) / 1e3;
    /* behind: more undelivered than ~1 s of deliveries to online users */
    double dps_expected = (double)(c1.expected - c0.expected) / secs;
    int held = p99 <= opt.p99_limit_ms * 1e3 && backlog <= (int64_t)(dps_expected * (1 - opt.offline_frac)) +
               (int64_t)(dps_expected * opt.offline_frac * opt.offline_s) + 1000;
    printf("%s%sphase=%d rate=%.0f pub_per_s=%.0f deliveries_per_s=%.0f live_per_s=%.0f queued_per_s=%.0f"
           " p50_us=%.0f p90_us=%.0f p99_us=%.0f p999_us=%.0f max_us=%.0f queued_p50_ms=%.0f"
           " ack_p50_us=%.0f ack_p99_us=%.0f",
           opt.label, *opt.label ? " " : "", phase_no, rate,
           (double)(c1.sent - c0.sent) / secs, (double)(c1.recv - c0.recv) / secs,
           (double)(c1.live - c0.live) / secs, (double)(c1.queued - c0.queued) / secs,
           hist_pct(&h_live, 50) / 1e3, hist_pct(&h_live, 90) / 1e3, p99,
           hist_pct(&h_live, 99.9) / 1e3, (double)h_live.max / 1e3, hist_pct(&h_queued, 50) / 1e6,
           hist_pct(&h_ack, 50) / 1e3, hist_pct(&h_ack, 99) / 1e3);
    printf(" users=%d groups=%d offline=%llu backlog=%lld skipped=%llu secs=%.2f", opt.users, opt.groups,
           (unsigned long long)g_offline, (long long)backlog, (unsigned long long)g_skipped, secs);
    if (opt.broker_pid)
        printf(" broker_cpu_pct=%.0f broker_cpu_us_per_delivery=%.1f broker_sys_pct_of_cpu=%.0f"
               " broker_rss_kb=%ld", 100.0 * bcpu / secs,
               c1.recv > c0.recv ? 1e6 * bcpu / (double)(c1.recv - c0.recv) : 0,
               bcpu > 0 ? 100.0 * bsys / bcpu : 0, rss);
    printf(" gen_cpu_pct=%.0f other_cpu_pct=%.0f held=%d", 100.0 * gcpu / secs,
           other > 0 ? 100.0 * other / secs : 0, held);
    fflush(stdout);
    return held;
}

/* everyone back online, then wait until every expected delivery arrived */
static void drain(double secs, uint64_t *lost, uint64_t *dup)
{
    uint64_t end = now_ns() + (uint64_t)(secs * 1e9);
    churn_credit = 0;
    opt.offline_frac = 0;
    for (int i = 0; i < opt.users; i++) if (users[i].back_at) users[i].back_at = 1;
    while (!g_stop && now_ns() < end) {
        churn(now_ns(), 0);
        int settled = g_recv_unique >= g_expected && g_pending == 0;
        for (int i = 0; settled && i < opt.users; i++) settled = users[i].inflight_mask == 0;
        if (settled) break;
        poll_once(10);
    }
    *lost = *dup = 0;
    for (uint32_t i = 0; i < msg_next; i++) {
        if (msg_received[i] < msg_expected[i]) *lost += msg_expected[i] - msg_received[i];
        else *dup += msg_received[i] - msg_expected[i];
    }
}

static void print_groups(void)
{
    for (int g = 0; g < opt.groups; g++) {
        printf("group.g%d = ", g);
        for (uint32_t k = 0; k < groups[g].n; k++) printf("%su%u", k ? ", " : "", groups[g].m[k]);
        printf("\n");
    }
}

static void usage(void)
{
    fprintf(stderr,
"usage: im_loadgen [options]\n"
"  -h HOST -p PORT          broker (IPv4 literal)\n"
"  --addr vgroup|topic      $group/$p2p topics (mqttd) or subscriptions (any broker)\n"
"  --users N --groups G (default N/4) --group-max M --zipf A --seed S\n"
"  --rate MSGS_PER_S --group-frac F --size BYTES --proto 4|5\n"
"  --offline-frac F --offline-s S\n"
"  --warmup S --measure S --drain S --setup-timeout S --concurrency N\n"
"  --saturate [--step X --p99-limit-ms MS --max-rate R]\n"
"  --src-addrs K --src-base ADDR --broker-pid PID --label TEXT -v\n"
"  --print-groups           print the groups as [plugin:virtual_groups] lines\n");
    exit(2);
}

int main(int argc, char **argv)
{
    static struct option lo[] = {
        {"addr", 1, 0, 1}, {"users", 1, 0, 2}, {"groups", 1, 0, 3}, {"group-max", 1, 0, 4},
        {"zipf", 1, 0, 5}, {"seed", 1, 0, 6}, {"rate", 1, 0, 7}, {"group-frac", 1, 0, 8},
        {"size", 1, 0, 9}, {"proto", 1, 0, 10}, {"offline-frac", 1, 0, 11}, {"offline-s", 1, 0, 12},
        {"warmup", 1, 0, 13}, {"measure", 1, 0, 14}, {"drain", 1, 0, 15}, {"setup-timeout", 1, 0, 16},
        {"concurrency", 1, 0, 17}, {"saturate", 0, 0, 18}, {"step", 1, 0, 19}, {"p99-limit-ms", 1, 0, 20},
        {"max-rate", 1, 0, 21}, {"src-addrs", 1, 0, 22}, {"src-base", 1, 0, 23}, {"broker-pid", 1, 0, 24},
        {"label", 1, 0, 25}, {"print-groups", 0, 0, 26}, {"verbose", 0, 0, 'v'}, {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "h:p:v", lo, NULL)) != -1) {
        switch (ch) {
        case 'h': opt.host = optarg; break;
        case 'p': opt.port = atoi(optarg); break;
        case 1:
            if (!strcmp(optarg, "topic")) opt.topic_addr = 1;
            else if (!strcmp(optarg, "vgroup")) opt.topic_addr = 0;
            else usage();
            break;
        case 2: opt.users = atoi(optarg); break;
        case 3: opt.groups = atoi(optarg); break;
        case 4: opt.group_max = atoi(optarg); break;
        case 5: opt.zipf = atof(optarg); break;
        case 6: opt.seed = strtoull(optarg, NULL, 10); break;
        case 7: opt.rate = atof(optarg); break;
        case 8: opt.group_frac = atof(optarg); break;
        case 9: opt.size = atoi(optarg); break;
        case 10: opt.proto = atoi(optarg); break;
        case 11: opt.offline_frac = atof(optarg); break;
        case 12: opt.offline_s = atof(optarg); break;
        case 13: opt.warmup_s = atof(optarg); break;
        case 14: opt.measure_s = atof(optarg); break;
        case 15: opt.drain_s = atof(optarg); break;
        case 16: opt.setup_timeout_s = atof(optarg); break;
        case 17: opt.concurrency = atoi(optarg); break;
        case 18: opt.saturate = 1; break;
        case 19: opt.step = atof(optarg); break;
        case 20: opt.p99_limit_ms = atof(optarg); break;
        case 21: opt.max_rate = atof(optarg); break;
        case 22: opt.src_addrs = atoi(optarg); break;
        case 23: opt.src_base = optarg; break;
        case 24: opt.broker_pid = atoi(optarg); break;
        case 25: opt.label = optarg; break;
        case 26: opt.print_groups = 1; break;
        case 'v': opt.verbose = 1; break;
        default: usage();
        }
    }
    if (opt.users < 2 || opt.size < 12 || (opt.proto != 4 && opt.proto != 5) || opt.step <= 1) usage();
    rng_state = opt.seed * 0x9E3779B97F4A7C15ull + 1;
    users = calloc((size_t)opt.users, sizeof *users);
    online = calloc((size_t)opt.users, sizeof *online);
    for (int i = 0; i < opt.users; i++) users[i].fd = -1;
    build_groups();
    if (opt.print_groups) { print_groups(); return 0; }

    memset(&broker_addr, 0, sizeof broker_addr);
    broker_addr.sin_family = AF_INET;
    broker_addr.sin_port = htons((uint16_t)opt.port);
    if (inet_pton(AF_INET, opt.host, &broker_addr.sin_addr) != 1) die("host must be an IPv4 literal");
    struct in_addr sb;
    if (inet_pton(AF_INET, opt.src_base, &sb) != 1) die("bad --src-base");
    src_base_h = ntohl(sb.s_addr);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_sig);
    signal(SIGTERM, on_sig);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    if ((long)rl.rlim_cur < opt.users + 64) die("RLIMIT_NOFILE %ld too low", (long)rl.rlim_cur);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1: %s", strerror(errno));

    /* set up: all users connect (and subscribe), at most --concurrency at once */
    uint64_t ts0 = now_ns(), deadline = ts0 + (uint64_t)(opt.setup_timeout_s * 1e9);
    int next = 0, ready = 0;
    while (!g_stop && now_ns() < deadline) {
        while (next < opt.users && g_pending < (uint64_t)opt.concurrency) conn_open(&users[next++]);
        ready = 0;
        if (next >= opt.users) {
            for (int i = 0; i < opt.users; i++) ready += users[i].st == ST_READY;
            if (ready == opt.users || g_pending == 0) break;
        }
        poll_once(next < opt.users ? 1 : 20);
    }
    double setup_s = (double)(now_ns() - ts0) / 1e9;
    long rss_setup = opt.broker_pid ? proc_rss_kb(opt.broker_pid) : -1;
    if (ready < opt.users) {
        printf("%s%serror=setup ready=%d/%d\n", opt.label, *opt.label ? " " : "", ready, opt.users);
        return 1;
    }
    vlog("setup: %d users in %.2f s", opt.users, setup_s);

    int status = 0;
    uint64_t lost = 0, dup = 0;
    if (!opt.saturate) {
        phase(opt.rate, opt.warmup_s, opt.measure_s, 1);
        drain(opt.drain_s, &lost, &dup);
        printf(" lost=%llu dup=%llu forced_closes=%llu setup_s=%.2f rss_after_setup_kb=%ld errors=%llu"
               " closed=%llu\n", (unsigned long long)lost, (unsigned long long)dup,
               (unsigned long long)g_forced, setup_s, rss_setup,
               (unsigned long long)(g_errors + g_proto_err), (unsigned long long)g_closed_by_peer);
        status = lost || g_errors || g_proto_err || g_closed_by_peer;
    } else {
        double rate = opt.rate, held_rate = 0;
        for (int n = 1; !g_stop && rate <= opt.max_rate; n++, rate *= opt.step) {
            int held = phase(rate, opt.warmup_s, opt.measure_s, n);
            printf(" errors=%llu\n", (unsigned long long)(g_errors + g_proto_err));
            if (!held) break;
            held_rate = rate;
        }
        drain(opt.drain_s, &lost, &dup);
        printf("%s%ssaturation held_rate=%.0f failed_rate=%.0f p99_limit_ms=%.0f lost=%llu dup=%llu"
               " setup_s=%.2f\n", opt.label, *opt.label ? " " : "", held_rate, rate, opt.p99_limit_ms,
               (unsigned long long)lost, (unsigned long long)dup, setup_s);
    }
    fflush(stdout);
    for (int i = 0; i < opt.users; i++)
        if (users[i].st == ST_READY) { queue_2(&users[i], 0xE0, 0x00); conn_flush(&users[i]); }
    return status;
}
