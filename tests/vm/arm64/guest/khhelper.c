/* khhelper: the few things the arm64 capture guest needs beyond busybox, in one static
 * binary (cross-built with aarch64-linux-gnu-gcc -static by run-chain.sh):
 *
 *   khhelper snap DEST PATH...          copy files (read to EOF: procfs, sysfs and debugfs
 *                                       report sizes 0 or 4096) to DEST/PATH; directories
 *                                       recursively, symlinks below the top skipped
 *   khhelper kmsg OUT                   the records /dev/kmsg returns, one per read()
 *   khhelper mtimes DIR OUT             "ns ISO size name" per file (pstore record times)
 *   khhelper load KERNEL INITRD CMDLINE kexec_file_load(2): the in-kernel file loader,
 *                                       which adds the KHO handover when KHO is on
 *   khhelper exec                       reboot(LINUX_REBOOT_CMD_KEXEC)
 *
 * One process does all the copying on purpose: under QEMU TCG many small processes in
 * the outgoing guest slow the next kernel's early boot (see the lab notes).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/reboot.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static char buf[1 << 16];

static void mkparents(const char *path)
{
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s", path);
	for (char *p = tmp + 1; *p; p++) {
		if (*p == '/') {
			*p = 0;
			mkdir(tmp, 0755);
			*p = '/';
		}
	}
}

static void copy_file(const char *src, const char *dst)
{
	int in = open(src, O_RDONLY | O_NONBLOCK);
	if (in < 0) {
		fprintf(stderr, "%s: %s\n", src, strerror(errno));
		return;
	}
	mkparents(dst);
	int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (out < 0) {
		fprintf(stderr, "%s: %s\n", dst, strerror(errno));
		close(in);
		return;
	}
	for (;;) {
		ssize_t n = read(in, buf, sizeof buf);
		if (n < 0) {
			fprintf(stderr, "%s: %s\n", src, strerror(errno));
			break;
		}
		if (n == 0)
			break;
		if (write(out, buf, n) != n) {
			fprintf(stderr, "%s: short write\n", dst);
			break;
		}
	}
	close(in);
	close(out);
}

static void snap(const char *dest, const char *src, int top)
{
	struct stat st;
	char dst[4096];
	if ((top ? stat(src, &st) : lstat(src, &st)) != 0) {
		if (top)
			fprintf(stderr, "%s: %s\n", src, strerror(errno));
		return;
	}
	snprintf(dst, sizeof dst, "%s%s", dest, src);
	if (S_ISREG(st.st_mode)) {
		copy_file(src, dst);
	} else if (S_ISDIR(st.st_mode)) {
		DIR *d = opendir(src);
		struct dirent *e;
		mkparents(dst);
		mkdir(dst, 0755);
		if (!d)
			return;
		while ((e = readdir(d))) {
			char sub[4096];
			if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
				continue;
			snprintf(sub, sizeof sub, "%s/%s", src, e->d_name);
			snap(dest, sub, 0);
		}
		closedir(d);
	}
}

static int kmsg(const char *out)
{
	int fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK);
	FILE *f = fopen(out, "wb");
	int recs = 0, lost = 0;
	if (fd < 0 || !f)
		return 1;
	for (;;) {
		ssize_t n = read(fd, buf, sizeof buf);
		if (n < 0 && errno == EPIPE) {
			lost++;
			continue;
		}
		if (n <= 0)
			break;
		fwrite(buf, 1, n, f);
		recs++;
	}
	fclose(f);
	fprintf(stderr, "records=%d epipe=%d\n", recs, lost);
	return 0;
}

static int mtimes(const char *dir, const char *out)
{
	DIR *d = opendir(dir);
	FILE *f;
	struct dirent *e;
	if (!d)
		return 0;
	f = fopen(out, "w");
	if (!f)
		return 1;
	while ((e = readdir(d))) {
		char p[4096], iso[64];
		struct stat st;
		struct tm tm;
		snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
		if (stat(p, &st) != 0 || !S_ISREG(st.st_mode))
			continue;
		gmtime_r(&st.st_mtim.tv_sec, &tm);
		strftime(iso, sizeof iso, "%Y-%m-%dT%H:%M:%S", &tm);
		fprintf(f, "%lld %s.%09ld+0000 %lld %s\n",
			(long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec, iso,
			st.st_mtim.tv_nsec, (long long)st.st_size, e->d_name);
	}
	closedir(d);
	fclose(f);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 4 && !strcmp(argv[1], "snap")) {
		for (int i = 3; i < argc; i++)
			snap(argv[2], argv[i], 1);
		return 0;
	}
	if (argc == 3 && !strcmp(argv[1], "kmsg"))
		return kmsg(argv[2]);
	if (argc == 4 && !strcmp(argv[1], "mtimes"))
		return mtimes(argv[2], argv[3]);
	if (argc == 5 && !strcmp(argv[1], "load")) {
		int k = open(argv[2], O_RDONLY), i = open(argv[3], O_RDONLY);
		long rc;
		if (k < 0 || i < 0) {
			perror("open");
			return 1;
		}
		rc = syscall(SYS_kexec_file_load, k, i, strlen(argv[4]) + 1, argv[4], 0UL);
		if (rc != 0) {
			perror("kexec_file_load");
			return 1;
		}
		return 0;
	}
	if (argc == 2 && !strcmp(argv[1], "exec")) {
		sync();
		reboot(LINUX_REBOOT_CMD_KEXEC);
		perror("reboot(KEXEC)");
		return 1;
	}
	fprintf(stderr, "usage: khhelper snap|kmsg|mtimes|load|exec ...\n");
	return 2;
}
