/* LD_PRELOAD shim for the power-loss replay test (tests/crash/test_power_loss.py).
 *
 * Keeps a shadow of what a power cut would leave: at every fsync(),
 * fdatasync() or syncfs() of a file under $SYNCED_ONLY_SPOOL, the file's
 * whole current content is copied to the same relative path under
 * $SYNCED_ONLY_SHADOW (written to a temporary name and renamed, so a kill
 * during the copy leaves the previous synced state), and only then is the
 * real call made.  syncfs() copies every regular file of the spool.  A file
 * never synced does not exist in the shadow; a file's unsynced writes are
 * not in it.  A directory sync makes the removals in that directory durable:
 * shadow files whose name is gone from the real directory are removed (an
 * unlink not followed by a directory sync may come back after a power cut,
 * as SQLite's rollback journal would).  Renames are not followed: the test
 * spool's durable state is the SQLite queue, which SQLite never renames.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static const char *spool(void) { return getenv("SYNCED_ONLY_SPOOL"); }
static const char *shadow(void) { return getenv("SYNCED_ONLY_SHADOW"); }

/* mkdir -p of the folders above `path` */
static void make_parents(const char *path) {
    char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p == '/') {
            *p = 0;
            mkdir(buf, 0700);
            *p = '/';
        }
    }
}

/* Copy the content of `fd` (the file at `path` under the spool) to the shadow.
 * The file is read through a new descriptor: `fd` may be open for writing only. */
static void copy_fd(int fd, const char *path) {
    const char *root = spool(), *dest = shadow();
    size_t n = strlen(root);
    struct stat st;
    if (!dest || strncmp(path, root, n) != 0 || (path[n] != '/' && path[n] != 0))
        return;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        return;
    char target[PATH_MAX], temp[PATH_MAX + 32];
    snprintf(target, sizeof target, "%s%s", dest, path + n);
    snprintf(temp, sizeof temp, "%s.synced-only-tmp", target);
    make_parents(target);
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    int in = open(link, O_RDONLY);
    if (in < 0)
        return;
    int out = open(temp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (out < 0) {
        close(in);
        return;
    }
    char buf[1 << 16];
    off_t offset = 0;
    ssize_t got;
    while ((got = pread(in, buf, sizeof buf, offset)) > 0) {
        if (write(out, buf, got) != got)
            break;
        offset += got;
    }
    close(in);
    close(out);
    rename(temp, target);
}

static void copy_path(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd >= 0) {
        copy_fd(fd, path);
        close(fd);
    }
}

static void copy_tree(const char *folder) {
    DIR *dir = opendir(folder);
    struct dirent *entry;
    if (!dir)
        return;
    while ((entry = readdir(dir)) != NULL) {
        if (!strcmp(entry->d_name, ".") || !strcmp(entry->d_name, ".."))
            continue;
        char path[PATH_MAX];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", folder, entry->d_name);
        if (lstat(path, &st) != 0)
            continue;
        if (S_ISDIR(st.st_mode))
            copy_tree(path);
        else if (S_ISREG(st.st_mode))
            copy_path(path);
    }
    closedir(dir);
}

/* The shadow of directory `path` loses the names the real one no longer has. */
static void sync_removals(const char *path) {
    const char *root = spool(), *dest = shadow();
    size_t n = strlen(root);
    if (strncmp(path, root, n) != 0 || (path[n] != '/' && path[n] != 0))
        return;
    char mirror[PATH_MAX];
    snprintf(mirror, sizeof mirror, "%s%s", dest, path + n);
    DIR *dir = opendir(mirror);
    struct dirent *entry;
    if (!dir)
        return;
    while ((entry = readdir(dir)) != NULL) {
        char real[PATH_MAX + 256], copy[PATH_MAX + 256];
        struct stat st;
        snprintf(real, sizeof real, "%s/%s", path, entry->d_name);
        snprintf(copy, sizeof copy, "%s/%s", mirror, entry->d_name);
        if (lstat(real, &st) != 0 && errno == ENOENT && lstat(copy, &st) == 0
                && S_ISREG(st.st_mode))
            unlink(copy);
    }
    closedir(dir);
}

static void note_sync(int fd, int whole_fs) {
    char link[64], path[PATH_MAX];
    if (!spool() || !shadow())
        return;
    pthread_mutex_lock(&lock);
    int saved = errno;
    if (whole_fs) {
        copy_tree(spool());
    } else {
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, path, sizeof path - 1);
        struct stat st;
        if (n > 0) {
            path[n] = 0;
            if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode))
                sync_removals(path);
            else
                copy_fd(fd, path);
        }
    }
    errno = saved;
    pthread_mutex_unlock(&lock);
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    note_sync(fd, 0);
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    note_sync(fd, 0);
    return real(fd);
}

int syncfs(int fd) {
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "syncfs");
    note_sync(fd, 1);
    return real(fd);
}
