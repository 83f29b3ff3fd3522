/*
 * sendfile(2) for narwhal's stored NARs: copies a range of an open file to a connected socket
 * inside the kernel, without passing the bytes through JavaScript buffers (what nginx does with
 * `sendfile on`). Linux only; narwhal falls back to reading and writing when this is not built.
 *
 * send(socketFd, fileFd, offset, length, stallMs, done) starts a transfer on a thread of its own
 * and returns a handle; cancel(handle) asks it to stop; done(sent, errno) is called on the JavaScript
 * thread when it is over. A thread of its own, not one of libuv's pool: a transfer lasts as long
 * as its client takes to read, and the pool's four threads do narwhal's file reads and writes.
 *
 * Both descriptors are duplicated before the call returns, so the transfer keeps writing to the
 * connection it was started on even if JavaScript closes its own descriptor meanwhile (a closed
 * number may be reused by another connection at once: writing to it would send one client's bytes
 * to another). The socket stays non-blocking: the thread waits for room with poll(2), checking
 * for cancellation between waits, and gives up after stallMs without progress.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/sendfile.h>
#include <time.h>
#include <unistd.h>

/* The longest single wait for room in the socket, so that a cancel is noticed soon. */
#define WAIT_SLICE_MS 200
/* The most handed to one sendfile(2) call. */
#define MAX_CALL_BYTES (8 * 1024 * 1024)
/* A transfer's thread needs little stack: a few calls deep, no large locals. */
#define THREAD_STACK_BYTES (64 * 1024)

typedef struct {
  napi_threadsafe_function done;
  int socket_fd;
  int file_fd;
  int64_t offset;
  int64_t remaining;
  int64_t stall_ms;
  int64_t sent;
  int error;
  /* 0 running, 1 asked to stop. */
  atomic_int cancelled;
  /* The transfer and its JavaScript handle each hold one; the last to let go frees it. */
  int holders;
} transfer_t;

static void release(transfer_t *t) {
  if (--t->holders == 0) free(t);
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void transfer(transfer_t *t) {
  off_t offset = (off_t)t->offset;
  int64_t last_progress = now_ms();
  while (t->remaining > 0) {
    if (atomic_load(&t->cancelled)) {
      t->error = ECANCELED;
      return;
    }
    size_t want = t->remaining > MAX_CALL_BYTES ? MAX_CALL_BYTES : (size_t)t->remaining;
    ssize_t n = sendfile(t->socket_fd, t->file_fd, &offset, want);
    if (n > 0) {
      t->sent += n;
      t->remaining -= n;
      last_progress = now_ms();
      continue;
    }
    if (n == 0) { /* the file ended before the range did */
      t->error = ENODATA;
      return;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN) {
      t->error = errno;
      return;
    }
    int64_t waited = now_ms() - last_progress;
    if (t->stall_ms > 0 && waited >= t->stall_ms) {
      t->error = ETIMEDOUT;
      return;
    }
    struct pollfd p = {.fd = t->socket_fd, .events = POLLOUT};
    int r = poll(&p, 1, WAIT_SLICE_MS);
    if (r < 0 && errno != EINTR) {
      t->error = errno;
      return;
    }
    if (r > 0 && (p.revents & (POLLERR | POLLHUP | POLLNVAL)) && !(p.revents & POLLOUT)) {
      t->error = EPIPE;
      return;
    }
  }
}

/* On the JavaScript thread, once the transfer is over. */
static void call_done(napi_env env, napi_value done, void *context, void *data) {
  (void)context;
  transfer_t *t = data;
  close(t->socket_fd);
  close(t->file_fd);
  if (env != NULL) { /* NULL while the environment is being torn down */
    napi_value global, args[2];
    napi_get_global(env, &global);
    napi_create_double(env, (double)t->sent, &args[0]);
    napi_create_int32(env, t->error, &args[1]);
    napi_call_function(env, global, done, 2, args, NULL);
  }
  release(t);
}

static void *run(void *data) {
  transfer_t *t = data;
  transfer(t);
  napi_threadsafe_function done = t->done;
  napi_call_threadsafe_function(done, t, napi_tsfn_blocking);
  napi_release_threadsafe_function(done, napi_tsfn_release);
  return NULL;
}

static void finalize_handle(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  release(data);
}

#define CHECK(call)                                                                              \
  do {                                                                                           \
    if ((call) != napi_ok) {                                                                     \
      napi_throw_error(env, NULL, "narwhal_sendfile: " #call " failed");                         \
      return NULL;                                                                               \
    }                                                                                            \
  } while (0)

/* send(socketFd, fileFd, offset, length, stallMs, callback) -> handle */
static napi_value send_file(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 6) {
    napi_throw_type_error(env, NULL, "send(socketFd, fileFd, offset, length, stallMs, callback)");
    return NULL;
  }
  int32_t socket_fd, file_fd;
  int64_t offset, length, stall_ms;
  CHECK(napi_get_value_int32(env, argv[0], &socket_fd));
  CHECK(napi_get_value_int32(env, argv[1], &file_fd));
  CHECK(napi_get_value_int64(env, argv[2], &offset));
  CHECK(napi_get_value_int64(env, argv[3], &length));
  CHECK(napi_get_value_int64(env, argv[4], &stall_ms));
  if (socket_fd < 0 || file_fd < 0 || offset < 0 || length < 0) {
    napi_throw_range_error(env, NULL, "narwhal_sendfile: negative descriptor, offset or length");
    return NULL;
  }
  transfer_t *t = calloc(1, sizeof *t);
  if (!t) {
    napi_throw_error(env, NULL, "narwhal_sendfile: out of memory");
    return NULL;
  }
  t->socket_fd = fcntl(socket_fd, F_DUPFD_CLOEXEC, 0);
  t->file_fd = fcntl(file_fd, F_DUPFD_CLOEXEC, 0);
  if (t->socket_fd < 0 || t->file_fd < 0) {
    int e = errno;
    if (t->socket_fd >= 0) close(t->socket_fd);
    if (t->file_fd >= 0) close(t->file_fd);
    free(t);
    napi_throw_error(env, NULL, e == EBADF ? "narwhal_sendfile: bad descriptor" : "narwhal_sendfile: dup failed");
    return NULL;
  }
  t->holders = 2;
  t->offset = offset;
  t->remaining = length;
  t->stall_ms = stall_ms;
  napi_value name, handle;
  CHECK(napi_create_string_utf8(env, "narwhal.sendfile", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_create_threadsafe_function(env, argv[5], NULL, name, 0, 1, NULL, NULL, NULL, call_done,
                                        &t->done));
  CHECK(napi_create_external(env, t, finalize_handle, NULL, &handle));
  pthread_attr_t attr;
  pthread_t thread;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, THREAD_STACK_BYTES);
  int e = pthread_create(&thread, &attr, run, t);
  pthread_attr_destroy(&attr);
  if (e != 0) {
    /* Nothing started: the handle's finalizer and this release free it. */
    napi_release_threadsafe_function(t->done, napi_tsfn_abort);
    close(t->socket_fd);
    close(t->file_fd);
    release(t);
    napi_throw_error(env, NULL, "narwhal_sendfile: no thread for the transfer");
    return NULL;
  }
  return handle;
}

/* cancel(handle): the transfer stops at its next wait (within WAIT_SLICE_MS) or call. */
static napi_value cancel(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  void *data;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_external(env, argv[0], &data));
  transfer_t *t = data;
  atomic_store(&t->cancelled, 1);
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"send", NULL, send_file, NULL, NULL, NULL, napi_default, NULL},
      {"cancel", NULL, cancel, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, 2, props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
