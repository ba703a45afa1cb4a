/* Echo backend for scripts/compare-peers.sh: single-threaded epoll, loopback.
 *
 *   echo-backend PORTFILE      listens on 127.0.0.1:0, writes the port to PORTFILE
 *
 * Every accepted connection gets back whatever it sends. When the peer is slow to
 * read, input is left in the kernel (EPOLLIN is dropped until the pending output
 * has drained), so memory stays bounded. Idle connections cost nothing here.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF (256 * 1024)
#define MAXFD 65536

struct conn {
    char *buf;  /* pending output, NULL when none */
    size_t off, len;
};
static struct conn conns[MAXFD];
static int ep;

static void drop(int fd) {
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
    free(conns[fd].buf);
    conns[fd].buf = NULL;
}

static void want(int fd, unsigned events) {
    struct epoll_event ev = {.events = events, .data.fd = fd};
    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
}

/* Write pending output; returns 1 when it all went, 0 when blocked, -1 on error. */
static int flush(int fd) {
    struct conn *c = &conns[fd];
    while (c->buf && c->off < c->len) {
        ssize_t n = write(fd, c->buf + c->off, c->len - c->off);
        if (n < 0) return (errno == EAGAIN || errno == EINTR) ? 0 : -1;
        c->off += (size_t)n;
    }
    free(c->buf);
    c->buf = NULL;
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s PORTFILE\n", argv[0]); return 2; }
    signal(SIGPIPE, SIG_IGN);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 4096) ||
        getsockname(ls, (struct sockaddr *)&a, &al)) { perror("listen"); return 1; }
    FILE *pf = fopen(argv[1], "w");
    if (!pf) { perror(argv[1]); return 1; }
    fprintf(pf, "%d\n", ntohs(a.sin_port));
    fclose(pf);

    ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    static char buf[BUF];
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0) { if (errno == EINTR) continue; perror("epoll_wait"); return 1; }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                int c;
                while ((c = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if (c >= MAXFD) { close(c); continue; }
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event e = {.events = EPOLLIN | EPOLLRDHUP, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &e);
                }
                continue;
            }
            if (evs[i].events & (EPOLLERR | EPOLLHUP)) { drop(fd); continue; }
            if (evs[i].events & EPOLLOUT) {
                int r = flush(fd);
                if (r < 0) { drop(fd); continue; }
                if (r == 1) want(fd, EPOLLIN | EPOLLRDHUP);
                continue;
            }
            if (conns[fd].buf) continue; /* still draining */
            for (;;) {
                ssize_t r = read(fd, buf, BUF);
                if (r == 0) { drop(fd); break; }
                if (r < 0) {
                    if (errno == EAGAIN) break;
                    if (errno == EINTR) continue;
                    drop(fd);
                    break;
                }
                ssize_t w = 0;
                while (w < r) {
                    ssize_t k = write(fd, buf + w, (size_t)(r - w));
                    if (k < 0) { if (errno == EINTR) continue; break; }
                    w += k;
                }
                if (w < r) {
                    if (errno != EAGAIN) { drop(fd); break; }
                    conns[fd].len = (size_t)(r - w);
                    conns[fd].off = 0;
                    conns[fd].buf = malloc(conns[fd].len);
                    memcpy(conns[fd].buf, buf + w, conns[fd].len);
                    want(fd, EPOLLOUT);
                    break;
                }
                if (r < BUF) break;
            }
        }
    }
}
