/* containerd's side of a stream processor, for the benchmarks.
 *
 * The erofs differ reads the processor's stdout with Go's io.Copy (32 KiB
 * reads) through a SHA-256 digester into the layer file
 * (docs/stream-processor-contract.md). This does the same: 32 KiB reads,
 * OpenSSL SHA-256, write(2) to the file named by argv[1]; it prints the
 * digest. A Python loop doing this is slower than Go, which flattered
 * producers that a fast reader would expose.
 *
 * Built by benchmarks/common.py: gcc -O2 consumer.c -lcrypto
 */
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv) {
    static unsigned char buf[32 * 1024];
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (argc != 2) {
        fprintf(stderr, "usage: consumer OUTPUT < stream\n");
        return 2;
    }
    int out = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (out < 0) {
        perror(argv[1]);
        return 1;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    for (;;) {
        ssize_t n = read(0, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            perror("read");
            return 1;
        }
        if (n == 0)
            break;
        EVP_DigestUpdate(ctx, buf, (size_t)n);
        for (ssize_t done = 0; done < n;) {
            ssize_t w = write(out, buf + done, (size_t)(n - done));
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0) {
                perror("write");
                return 1;
            }
            done += w;
        }
    }
    EVP_DigestFinal_ex(ctx, digest, &len);
    for (unsigned int i = 0; i < len; i++)
        printf("%02x", digest[i]);
    printf("\n");
    return close(out) == 0 ? 0 : 1;
}
