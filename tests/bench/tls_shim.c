/* LD_PRELOAD shim for wrk, used by tls.sh: counts the TLS handshakes wrk completes, full and
 * resumed (SSL_session_reused), and with TLSB_NO_RESUME=1 makes every one of them full.
 * wrk (4.1) reuses one SSL object per connection slot: on reconnect it calls SSL_clear, which keeps
 * the last session, so the next handshake offers it (a TLS 1.3 PSK from the server's ticket, or a
 * TLS 1.2 ticket/session id) and is resumed. Dropping the session after SSL_clear makes the next
 * handshake a full one; nothing else in wrk changes. At exit the counts are written to the file
 * named by TLSB_COUNTS as "full resumed". Build: gcc -O2 -shared -fPIC -o tls_shim.so tls_shim.c -ldl */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct ssl_st SSL;
typedef struct ssl_session_st SSL_SESSION;
static int (*real_connect)(SSL *), (*real_clear)(SSL *), (*is_reused)(const SSL *);
static int (*set_session)(SSL *, SSL_SESSION *);
static unsigned long full, resumed;
static int no_resume;

__attribute__((constructor)) static void init(void) {
  real_connect = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_connect");
  real_clear = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_clear");
  is_reused = (int (*)(const SSL *))dlsym(RTLD_NEXT, "SSL_session_reused");
  set_session = (int (*)(SSL *, SSL_SESSION *))dlsym(RTLD_NEXT, "SSL_set_session");
  const char *v = getenv("TLSB_NO_RESUME");
  no_resume = v && v[0] == '1';
}

int SSL_connect(SSL *s) {
  int r = real_connect(s);
  if (r == 1) __atomic_fetch_add(is_reused(s) ? &resumed : &full, 1, __ATOMIC_RELAXED);
  return r;
}

int SSL_clear(SSL *s) {
  int r = real_clear(s);
  if (no_resume) set_session(s, NULL); /* forget the session: the next handshake is full */
  return r;
}

__attribute__((destructor)) static void fini(void) {
  const char *out = getenv("TLSB_COUNTS");
  FILE *f = (out && real_connect) ? fopen(out, "w") : NULL;
  if (f) {
    fprintf(f, "%lu %lu\n", full, resumed);
    fclose(f);
  }
}
