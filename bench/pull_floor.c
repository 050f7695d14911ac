// The least a verified, durable pull of N blobs can do (bench/pull_floor.py builds and runs it):
// one thread per blob, one HTTP/1.1 GET each, every body byte into SHA-256 (OpenSSL's, which
// uses the CPU's SHA extensions) and written to a file with O_DIRECT (DIRECT=1) or through the
// page cache (0), fdatasync at the end, the digest compared. No piece keys, no metadata, no
// start-up beyond exec: what pybuild's pull does besides this is its own cost.
// Usage: pull_floor HOST PORT REPO OUTDIR DIRECT DIGEST...
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
static const char *host; static int port; static const char *repo; static const char *outdir; static int direct;
static void die(const char *what) { perror(what); exit(1); }
static void *pull(void *arg) {
    const char *digest = arg;
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &a.sin_addr);
    if (s < 0 || connect(s, (void *)&a, sizeof a)) die("connect");
    char req[512]; int n = snprintf(req, sizeof req, "GET /v2/%s/blobs/%s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n", repo, digest, host, port);
    if (write(s, req, n) != n) die("send");
    size_t stage = 8 << 20; char *buf;
    if (posix_memalign((void **)&buf, 4096, stage + 65536)) die("posix_memalign");
    char path[512]; snprintf(path, sizeof path, "%s/%s", outdir, digest + 7);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | (direct ? O_DIRECT : 0), 0644);
    if (fd < 0) die(path);
    SHA256_CTX c; SHA256_Init(&c);
    size_t have = 0, body = 0; long disk = 0; int inbody = 0;
    for (;;) {
        ssize_t r = recv(s, buf + have, stage + 65536 - have, 0);
        if (r <= 0) break;
        if (!inbody) {  // the headers come in the first reads
            have += r;
            char *e = memmem(buf, have, "\r\n\r\n", 4);
            if (!e) continue;
            if (have < 12 || memcmp(buf + 8, " 200", 4)) { fprintf(stderr, "%s: %.40s\n", digest, buf); exit(2); }
            size_t hl = e + 4 - buf; memmove(buf, buf + hl, have - hl); have -= hl; inbody = 1;
            SHA256_Update(&c, buf, have); body += have;
        } else { SHA256_Update(&c, buf + have, r); have += r; body += r; }
        while (have >= stage) {
            if (pwrite(fd, buf, stage, disk) != (ssize_t)stage) die("pwrite");
            disk += stage; memmove(buf, buf + stage, have - stage); have -= stage;
        }
    }
    if (have) {  // the unaligned tail, without O_DIRECT
        close(fd);
        if ((fd = open(path, O_WRONLY)) < 0 || pwrite(fd, buf, have, disk) != (ssize_t)have) die("tail");
    }
    if (fdatasync(fd)) die("fdatasync");
    close(fd); close(s); free(buf);
    unsigned char md[32]; SHA256_Final(md, &c);
    char hex[65]; for (int i = 0; i < 32; i++) sprintf(hex + 2 * i, "%02x", md[i]);
    if (strcmp(hex, digest + 7)) { fprintf(stderr, "%s: the body (%zu bytes) hashes to %s\n", digest, body, hex); exit(2); }
    return NULL;
}
int main(int argc, char **argv) {
    host = argv[1]; port = atoi(argv[2]); repo = argv[3]; outdir = argv[4]; direct = atoi(argv[5]);
    if (argc < 7 || argc - 6 > 64) { fprintf(stderr, "usage: pull_floor HOST PORT REPO OUTDIR DIRECT DIGEST... (up to 64)\n"); return 2; }
    int n = argc - 6; pthread_t t[64];
    for (int i = 0; i < n; i++) pthread_create(&t[i], NULL, pull, argv[6 + i]);
    for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
    return 0;
}
