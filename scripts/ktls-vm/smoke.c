/*
 * kTLS smoke test for the tlsplice VM harness (scripts/ktls-vm-test.sh).
 *
 * For each (TLS version, cipher) it builds a loopback TCP pair, sets the
 * "tls" ULP on both ends, installs the same made-up key/iv/salt/seq as TLS_TX
 * on the sender and TLS_RX on the receiver, and checks that:
 *   - a data record sent with send() comes back from recvmsg() intact with a
 *     TLS_GET_RECORD_TYPE cmsg of 23;
 *   - an alert sent with sendmsg(cmsg TLS_SET_RECORD_TYPE=21) comes back as
 *     record type 21 with the same payload, alone;
 *   - a data record after the alert still decrypts (stream stays in sync);
 *   - the same again in the other direction (each socket has TX and RX);
 *   - "wire": on a second pair whose receiver has no TLS_RX yet, the bytes on
 *     the wire are one TLS record (header 0x17 0x03 0x03, expected length,
 *     no plaintext), and after consuming it raw the receiver can switch on
 *     TLS_RX with rec_seq+1 and decrypt the next record (the handover case).
 *
 * Build: gcc -O2 -static -o smoke smoke.c      Run: ./smoke   (exit 0 = all PASS)
 * Constants are those of /work/shared/research/ktls.md (libc 0.2.191).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/tls.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

/* The values tlsplice uses (libc crate); fail the build if the header disagrees. */
#define K_SOL_TCP 6
#define K_TCP_ULP 31
#define K_SOL_TLS 282
#define K_TLS_TX 1
#define K_TLS_RX 2
#define K_TLS_SET_RECORD_TYPE 1
#define K_TLS_GET_RECORD_TYPE 2
#define REC_ALERT 21
#define REC_DATA 23
_Static_assert(K_SOL_TCP == SOL_TCP, "SOL_TCP");
_Static_assert(K_TCP_ULP == TCP_ULP, "TCP_ULP");
#ifdef SOL_TLS
_Static_assert(K_SOL_TLS == SOL_TLS, "SOL_TLS");
#endif
_Static_assert(K_TLS_TX == TLS_TX && K_TLS_RX == TLS_RX, "TLS_TX/RX");
_Static_assert(K_TLS_SET_RECORD_TYPE == TLS_SET_RECORD_TYPE, "TLS_SET_RECORD_TYPE");
_Static_assert(K_TLS_GET_RECORD_TYPE == TLS_GET_RECORD_TYPE, "TLS_GET_RECORD_TYPE");
_Static_assert(TLS_CIPHER_AES_GCM_128 == 51 && TLS_CIPHER_AES_GCM_256 == 52 &&
                   TLS_CIPHER_CHACHA20_POLY1305 == 54, "cipher ids");
_Static_assert(TLS_1_2_VERSION == 0x0303 && TLS_1_3_VERSION == 0x0304, "versions");

static int failures;

static void result(int ok, const char *name, const char *fmt, ...)
{
    char detail[256] = "";
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(detail, sizeof detail, fmt, ap);
        va_end(ap);
    }
    printf("%s %s%s%s\n", ok ? "PASS" : "FAIL", name, detail[0] ? ": " : "", detail);
    fflush(stdout);
    if (!ok)
        failures++;
}

struct suite {
    const char *name;
    uint16_t version;
    uint16_t cipher;
};

union crypto_info {
    struct tls_crypto_info base;
    struct tls12_crypto_info_aes_gcm_128 aes128;
    struct tls12_crypto_info_aes_gcm_256 aes256;
    struct tls12_crypto_info_chacha20_poly1305 chacha;
};

/* Fill made-up key material; `dir` makes the two directions use different keys. */
static size_t make_info(union crypto_info *ci, const struct suite *s, int dir, uint64_t seq)
{
    uint8_t rec_seq[8];
    for (int i = 0; i < 8; i++)
        rec_seq[i] = (uint8_t)(seq >> (56 - 8 * i));
    memset(ci, 0, sizeof *ci);
    ci->base.version = s->version;
    ci->base.cipher_type = s->cipher;
    switch (s->cipher) {
    case TLS_CIPHER_AES_GCM_128:
        for (int i = 0; i < 16; i++) ci->aes128.key[i] = (uint8_t)(0x10 + i + 0x40 * dir);
        for (int i = 0; i < 8; i++) ci->aes128.iv[i] = (uint8_t)(0xa0 + i + dir);
        for (int i = 0; i < 4; i++) ci->aes128.salt[i] = (uint8_t)(0x5a + i + dir);
        memcpy(ci->aes128.rec_seq, rec_seq, 8);
        return sizeof ci->aes128;
    case TLS_CIPHER_AES_GCM_256:
        for (int i = 0; i < 32; i++) ci->aes256.key[i] = (uint8_t)(0x20 + i + 0x40 * dir);
        for (int i = 0; i < 8; i++) ci->aes256.iv[i] = (uint8_t)(0xb0 + i + dir);
        for (int i = 0; i < 4; i++) ci->aes256.salt[i] = (uint8_t)(0x6a + i + dir);
        memcpy(ci->aes256.rec_seq, rec_seq, 8);
        return sizeof ci->aes256;
    case TLS_CIPHER_CHACHA20_POLY1305:
        for (int i = 0; i < 32; i++) ci->chacha.key[i] = (uint8_t)(0x30 + i + 0x40 * dir);
        for (int i = 0; i < 12; i++) ci->chacha.iv[i] = (uint8_t)(0xc0 + i + dir);
        memcpy(ci->chacha.rec_seq, rec_seq, 8);
        return sizeof ci->chacha;
    }
    return 0;
}

/* Bytes a record adds around the plaintext on the wire, not counting the 5-byte header. */
static size_t record_overhead(const struct suite *s)
{
    size_t o = 16; /* AEAD tag */
    if (s->version == TLS_1_3_VERSION)
        o += 1; /* inner content type */
    else if (s->cipher != TLS_CIPHER_CHACHA20_POLY1305)
        o += 8; /* TLS 1.2 GCM explicit nonce */
    return o;
}

static int set_ktls(int fd, int dir_opt, const struct suite *s, int key_dir, uint64_t seq,
                    char *err, size_t errlen)
{
    union crypto_info ci;
    size_t len = make_info(&ci, s, key_dir, seq);
    if (setsockopt(fd, K_SOL_TLS, dir_opt, &ci, (socklen_t)len) < 0) {
        snprintf(err, errlen, "setsockopt(SOL_TLS, %s): %s", dir_opt == K_TLS_TX ? "TLS_TX" : "TLS_RX",
                 strerror(errno));
        return -1;
    }
    /* Read the configuration back: version and cipher must be what we set.
     * The kernel wants exactly the size of the cipher's struct (6.1: EINVAL otherwise). */
    union crypto_info back;
    socklen_t blen = (socklen_t)len;
    memset(&back, 0, sizeof back);
    if (getsockopt(fd, K_SOL_TLS, dir_opt, &back, &blen) < 0) {
        snprintf(err, errlen, "getsockopt(SOL_TLS): %s", strerror(errno));
        return -1;
    }
    if (back.base.version != s->version || back.base.cipher_type != s->cipher) {
        snprintf(err, errlen, "getsockopt returned version %#x cipher %u", back.base.version,
                 back.base.cipher_type);
        return -1;
    }
    if (blen != len || memcmp(&back, &ci, len) != 0) {
        snprintf(err, errlen, "getsockopt returned a different crypto_info (%u bytes)", blen);
        return -1;
    }
    return 0;
}

static int tcp_pair(int *a, int *b, char *err, size_t errlen)
{
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    *a = *b = -1;
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, 1) < 0 ||
        getsockname(lfd, (struct sockaddr *)&sa, &sl) < 0) {
        snprintf(err, errlen, "listen: %s", strerror(errno));
        goto fail;
    }
    *a = socket(AF_INET, SOCK_STREAM, 0);
    if (*a < 0 || connect(*a, (struct sockaddr *)&sa, sizeof sa) < 0) {
        snprintf(err, errlen, "connect: %s", strerror(errno));
        goto fail;
    }
    *b = accept(lfd, NULL, NULL);
    if (*b < 0) {
        snprintf(err, errlen, "accept: %s", strerror(errno));
        goto fail;
    }
    close(lfd);
    struct timeval tv = {.tv_sec = 5};
    int one = 1;
    for (int i = 0; i < 2; i++) {
        int fd = i ? *b : *a;
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (setsockopt(fd, K_SOL_TCP, K_TCP_ULP, "tls", 3) < 0) {
            snprintf(err, errlen, "setsockopt(TCP_ULP, \"tls\"): %s", strerror(errno));
            goto fail;
        }
    }
    return 0;
fail:
    if (lfd >= 0) close(lfd);
    if (*a >= 0) close(*a);
    if (*b >= 0) close(*b);
    *a = *b = -1;
    return -1;
}

static int send_record(int fd, int type, const void *buf, size_t len, char *err, size_t errlen)
{
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    union {
        char buf[CMSG_SPACE(1)];
        struct cmsghdr align;
    } c;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (type != REC_DATA) {
        memset(&c, 0, sizeof c);
        msg.msg_control = c.buf;
        msg.msg_controllen = sizeof c.buf;
        struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
        cm->cmsg_level = K_SOL_TLS;
        cm->cmsg_type = K_TLS_SET_RECORD_TYPE;
        cm->cmsg_len = CMSG_LEN(1);
        *CMSG_DATA(cm) = (unsigned char)type;
    }
    ssize_t n = type == REC_DATA ? send(fd, buf, len, 0) : sendmsg(fd, &msg, 0);
    if (n != (ssize_t)len) {
        snprintf(err, errlen, "send type %d: %zd (%s)", type, n, n < 0 ? strerror(errno) : "short");
        return -1;
    }
    return 0;
}

/* One recvmsg; the record must have type `want_type` and payload `want`. */
static int recv_record(int fd, int want_type, const void *want, size_t wlen, char *err, size_t errlen)
{
    char buf[16384 + 64];
    union {
        char buf[CMSG_SPACE(sizeof(unsigned char))];
        struct cmsghdr align;
    } c;
    struct iovec iov = {.iov_base = buf, .iov_len = sizeof buf};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = c.buf,
                         .msg_controllen = sizeof c.buf};
    ssize_t n = recvmsg(fd, &msg, 0);
    if (n < 0) {
        snprintf(err, errlen, "recvmsg: %s", strerror(errno));
        return -1;
    }
    int type = -1;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm))
        if (cm->cmsg_level == K_SOL_TLS && cm->cmsg_type == K_TLS_GET_RECORD_TYPE)
            type = *CMSG_DATA(cm);
    if (type != want_type) {
        snprintf(err, errlen, "record type %d, want %d (flags %#x)", type, want_type, msg.msg_flags);
        return -1;
    }
    if ((size_t)n != wlen || memcmp(buf, want, wlen) != 0) {
        snprintf(err, errlen, "payload mismatch: got %zd bytes, want %zu", n, wlen);
        return -1;
    }
    return 0;
}

/* Exactly len bytes with plain recv (no kTLS RX on this socket yet). */
static int recv_raw(int fd, uint8_t *buf, size_t len, char *err, size_t errlen)
{
    size_t got = 0;
    for (int tries = 0; got < len && tries < 100; tries++) {
        ssize_t n = recv(fd, buf + got, len - got, 0);
        if (n <= 0) {
            snprintf(err, errlen, "raw recv: %zd (%s)", n, n < 0 ? strerror(errno) : "EOF");
            return -1;
        }
        got += (size_t)n;
    }
    if (got != len) {
        snprintf(err, errlen, "raw recv: %zu of %zu bytes", got, len);
        return -1;
    }
    return 0;
}

/* sender TX(key_dir) -> receiver RX(key_dir): data, alert, data. */
static int one_direction(int tx, int rx, const struct suite *s, int key_dir, uint64_t seq,
                         char *err, size_t errlen)
{
    static const uint8_t alert[2] = {1, 0}; /* warning, close_notify */
    char msg1[96], msg2[96];
    snprintf(msg1, sizeof msg1, "tlsplice kTLS smoke %s dir %d first", s->name, key_dir);
    snprintf(msg2, sizeof msg2, "tlsplice kTLS smoke %s dir %d after alert", s->name, key_dir);
    if (set_ktls(tx, K_TLS_TX, s, key_dir, seq, err, errlen) ||
        set_ktls(rx, K_TLS_RX, s, key_dir, seq, err, errlen))
        return -1;
    if (send_record(tx, REC_DATA, msg1, strlen(msg1), err, errlen) ||
        recv_record(rx, REC_DATA, msg1, strlen(msg1), err, errlen))
        return -1;
    if (send_record(tx, REC_ALERT, alert, sizeof alert, err, errlen) ||
        recv_record(rx, REC_ALERT, alert, sizeof alert, err, errlen))
        return -1;
    if (send_record(tx, REC_DATA, msg2, strlen(msg2), err, errlen) ||
        recv_record(rx, REC_DATA, msg2, strlen(msg2), err, errlen))
        return -1;
    return 0;
}

static void run_suite(const struct suite *s)
{
    char err[256] = "", name[96];
    int a, b;
    const uint64_t seq = 7; /* made up, same on both ends */

    /* 1. data + alert + data, a->b then b->a */
    snprintf(name, sizeof name, "%s data+alert both directions", s->name);
    if (tcp_pair(&a, &b, err, sizeof err) == 0) {
        int ok = one_direction(a, b, s, 0, seq, err, sizeof err) == 0 &&
                 one_direction(b, a, s, 1, seq, err, sizeof err) == 0;
        if (ok && s->version == TLS_1_3_VERSION && s->cipher == TLS_CIPHER_AES_GCM_128) {
            /* Not a check: report whether this kernel can re-key (Linux >= 6.14
             * accepts a second TLS_TX; older kernels answer EBUSY). */
            union crypto_info ci;
            size_t len = make_info(&ci, s, 2, 0);
            int r = setsockopt(a, K_SOL_TLS, K_TLS_TX, &ci, (socklen_t)len);
            printf("INFO TLS1.3 re-key (second TLS_TX setsockopt): %s\n",
                   r == 0 ? "accepted (kernel has TLS 1.3 rekey, >= 6.14)"
                          : errno == EBUSY ? "EBUSY (no rekey: KeyUpdate must end the connection)"
                                           : strerror(errno));
        }
        if (ok)
            result(1, name, NULL);
        else
            result(0, name, "%s", err);
        close(a);
        close(b);
    } else {
        result(0, name, "%s", err);
    }

    /* 2. wire format + handover: raw record first, then TLS_RX at seq+1 */
    snprintf(name, sizeof name, "%s wire record + RX handover at seq+1", s->name);
    if (tcp_pair(&a, &b, err, sizeof err) == 0) {
        static const char plain[] = "this plaintext must not appear on the wire";
        static const char next[] = "decrypted by kTLS RX after a raw record";
        size_t wlen = 5 + strlen(plain) + record_overhead(s);
        uint8_t wire[256];
        int ok = 0;
        if (set_ktls(a, K_TLS_TX, s, 0, seq, err, sizeof err) == 0 &&
            send_record(a, REC_DATA, plain, strlen(plain), err, sizeof err) == 0 &&
            recv_raw(b, wire, wlen, err, sizeof err) == 0) {
            size_t body = (size_t)wire[3] << 8 | wire[4];
            if (wire[0] != REC_DATA || wire[1] != 3 || wire[2] != 3 || body != wlen - 5)
                snprintf(err, sizeof err, "header %02x %02x %02x len %zu, want 17 03 03 len %zu",
                         wire[0], wire[1], wire[2], body, wlen - 5);
            else if (memmem(wire, wlen, plain, 8) != NULL)
                snprintf(err, sizeof err, "plaintext visible on the wire");
            else if (set_ktls(b, K_TLS_RX, s, 0, seq + 1, err, sizeof err) == 0 &&
                     send_record(a, REC_DATA, next, strlen(next), err, sizeof err) == 0 &&
                     recv_record(b, REC_DATA, next, strlen(next), err, sizeof err) == 0)
                ok = 1;
        }
        if (ok)
            result(1, name, "%zu-byte record on the wire", wlen);
        else
            result(0, name, "%s", err);
        close(a);
        close(b);
    } else {
        result(0, name, "%s", err);
    }
}

int main(void)
{
    static const struct suite suites[] = {
        {"TLS1.3-AES-128-GCM", TLS_1_3_VERSION, TLS_CIPHER_AES_GCM_128},
        {"TLS1.3-AES-256-GCM", TLS_1_3_VERSION, TLS_CIPHER_AES_GCM_256},
        {"TLS1.3-CHACHA20-POLY1305", TLS_1_3_VERSION, TLS_CIPHER_CHACHA20_POLY1305},
        {"TLS1.2-AES-128-GCM", TLS_1_2_VERSION, TLS_CIPHER_AES_GCM_128},
        {"TLS1.2-AES-256-GCM", TLS_1_2_VERSION, TLS_CIPHER_AES_GCM_256},
        {"TLS1.2-CHACHA20-POLY1305", TLS_1_2_VERSION, TLS_CIPHER_CHACHA20_POLY1305},
    };
    alarm(120); /* never hang the VM */
    for (size_t i = 0; i < sizeof suites / sizeof suites[0]; i++)
        run_suite(&suites[i]);
    printf("smoke: %d failure(s)\n", failures);
    return failures ? 1 : 0;
}
