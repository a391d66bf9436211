// SPDX-License-Identifier: GPL-2.0
/* libbpf reference consumer for `migrator bench overhead` and `bench consumers`.
 *
 * Reads one migrator channel's ring buffer (ring_buffer__new) and/or perf event array
 * (perf_buffer__new_raw, one BPF-output event per CPU with the same watermark our consumer
 * uses) of an already loaded program, on a timer: every --interval-ms it calls
 * ring_buffer__consume and perf_buffer__consume, nothing else. Maps come as inherited fds
 * (--ring-fd N) or bpffs pins (--ring PATH). Prints "ready" once the buffers are set up, and at
 * SIGUSR1 prints {"cpu_s", "mono"} (a CPU mark: getrusage and CLOCK_MONOTONIC), and at
 * SIGTERM/SIGINT it drains what is left and prints one JSON line: records and bytes per channel,
 * perf LOST records, wake-ups and its own getrusage CPU.
 *
 *   refconsumer --ring-fd 5 --perf-fd 6 --interval-ms 5 --perf-pages 64 --watermark 65536
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/perf_event.h>
#include <sys/resource.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

struct tally {
	unsigned long long records, bytes, lost;
};

static volatile sig_atomic_t stop, mark;
static struct tally ring_t, perf_t;

static void on_signal(int sig)
{
	if (sig == SIGUSR1)
		mark = 1;
	else
		stop = 1;
}

/* CPU seconds of this whole process so far (user + system). */
static double cpu_s(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* One ring record: count it and its bytes (migrator header + payload). */
static int on_ring(void *ctx, void *data, size_t size)
{
	(void)ctx;
	(void)data;
	ring_t.records++;
	ring_t.bytes += size;
	return 0;
}

/* A perf sample is {header, u32 size, raw record}; LOST is {header, u64 id, u64 lost}. */
struct sample {
	struct perf_event_header hdr;
	unsigned int size;
	char data[];
};

struct lost {
	struct perf_event_header hdr;
	unsigned long long id, lost;
};

static enum bpf_perf_event_ret on_perf(void *ctx, int cpu, struct perf_event_header *e)
{
	(void)ctx;
	(void)cpu;
	if (e->type == PERF_RECORD_SAMPLE) {
		perf_t.records++;
		perf_t.bytes += ((struct sample *)e)->size;
	} else if (e->type == PERF_RECORD_LOST) {
		perf_t.lost += ((struct lost *)e)->lost;
	}
	return LIBBPF_PERF_EVENT_CONT;
}

/* A map from "--x-fd N" (inherited) or "--x PATH" (pinned in bpffs). */
static int map_fd(const char *fd_arg, const char *path_arg)
{
	if (fd_arg)
		return atoi(fd_arg);
	if (path_arg)
		return bpf_obj_get(path_arg);
	return -1;
}

static double tv_s(struct timeval tv)
{
	return tv.tv_sec + tv.tv_usec / 1e6;
}

int main(int argc, char **argv)
{
	const char *ring_fd_s = NULL, *ring_path = NULL, *perf_fd_s = NULL, *perf_path = NULL;
	long interval_ms = 5, pages = 64, watermark = -1;
	struct ring_buffer *rb = NULL;
	struct perf_buffer *pb = NULL;
	unsigned long long wakes = 0;

	for (int i = 1; i + 1 < argc; i += 2) {
		const char *k = argv[i], *v = argv[i + 1];
		if (!strcmp(k, "--ring-fd")) ring_fd_s = v;
		else if (!strcmp(k, "--ring")) ring_path = v;
		else if (!strcmp(k, "--perf-fd")) perf_fd_s = v;
		else if (!strcmp(k, "--perf")) perf_path = v;
		else if (!strcmp(k, "--interval-ms")) interval_ms = atol(v);
		else if (!strcmp(k, "--perf-pages")) pages = atol(v);
		else if (!strcmp(k, "--watermark")) watermark = atol(v);
		else {
			fprintf(stderr, "refconsumer: unknown option %s\n", k);
			return 2;
		}
	}
	if (interval_ms <= 0 || pages <= 0 || (pages & (pages - 1))) {
		fprintf(stderr, "refconsumer: --interval-ms must be > 0 and --perf-pages a power of two\n");
		return 2;
	}

	int rfd = map_fd(ring_fd_s, ring_path), pfd = map_fd(perf_fd_s, perf_path);
	if ((ring_fd_s || ring_path) && rfd < 0) {
		fprintf(stderr, "refconsumer: failed to open the ring map: %s\n", strerror(errno));
		return 1;
	}
	if ((perf_fd_s || perf_path) && pfd < 0) {
		fprintf(stderr, "refconsumer: failed to open the perf map: %s\n", strerror(errno));
		return 1;
	}
	if (rfd >= 0) {
		rb = ring_buffer__new(rfd, on_ring, NULL, NULL);
		if (!rb) {
			fprintf(stderr, "refconsumer: failed to set up the ring buffer: %s\n", strerror(errno));
			return 1;
		}
	}
	if (pfd >= 0) {
		/* Our consumer's perf attributes: wake at a watermark (default a quarter buffer), not per record. */
		struct perf_event_attr attr = {
			.type = PERF_TYPE_SOFTWARE,
			.size = sizeof(attr),
			.config = PERF_COUNT_SW_BPF_OUTPUT,
			.sample_period = 1,
			.sample_type = PERF_SAMPLE_RAW,
		};
		long page = sysconf(_SC_PAGESIZE);
		if (watermark < 0)
			watermark = pages * page / 4;
		if (watermark > 0) {
			attr.watermark = 1;
			attr.wakeup_watermark = watermark;
		} else {
			attr.wakeup_events = 1;
		}
		pb = perf_buffer__new_raw(pfd, pages, &attr, on_perf, NULL, NULL);
		if (!pb) {
			fprintf(stderr, "refconsumer: failed to set up the perf buffers: %s\n", strerror(errno));
			ring_buffer__free(rb);
			return 1;
		}
	}
	if (!rb && !pb) {
		fprintf(stderr, "refconsumer: give --ring-fd/--ring and/or --perf-fd/--perf\n");
		return 2;
	}

	struct sigaction sa = { .sa_handler = on_signal };
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGUSR1, &sa, NULL);
	printf("ready\n");
	fflush(stdout);

	/* Wake on an absolute timer; a late wake-up restarts the clock instead of catching up. */
	struct timespec next;
	clock_gettime(CLOCK_MONOTONIC, &next);
	while (!stop) {
		next.tv_nsec += interval_ms * 1000000L;
		while (next.tv_nsec >= 1000000000L) {
			next.tv_nsec -= 1000000000L;
			next.tv_sec++;
		}
		if (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR)
			continue;
		wakes++;
		if (rb)
			ring_buffer__consume(rb);
		if (pb)
			perf_buffer__consume(pb);
		struct timespec now;
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (mark) {
			mark = 0;
			printf("{\"cpu_s\": %.6f, \"mono\": %.9f}\n", cpu_s(), now.tv_sec + now.tv_nsec / 1e9);
			fflush(stdout);
		}
		if (now.tv_sec > next.tv_sec || (now.tv_sec == next.tv_sec && now.tv_nsec > next.tv_nsec))
			next = now;
	}
	/* Drain what is left: the caller compares these counts with the kernel's counters. */
	if (rb)
		ring_buffer__consume(rb);
	if (pb)
		perf_buffer__consume(pb);

	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	printf("{\"ring_records\": %llu, \"ring_bytes\": %llu, \"perf_records\": %llu, \"perf_bytes\": %llu, "
	       "\"perf_lost\": %llu, \"wakes\": %llu, \"interval_ms\": %ld, \"user_s\": %.6f, \"sys_s\": %.6f}\n",
	       ring_t.records, ring_t.bytes, perf_t.records, perf_t.bytes, perf_t.lost, wakes, interval_ms,
	       tv_s(ru.ru_utime), tv_s(ru.ru_stime));
	fflush(stdout);
	perf_buffer__free(pb);
	ring_buffer__free(rb);
	return 0;
}
