/*
 * A C NFSv3 client that keeps DEPTH READs in flight on one connection, as ESXi does (its data
 * mover keeps dozens outstanding per datastore connection). libnfs's async API, one context,
 * one TCP connection, one poll() loop; compiled by benchmarks/nfs_inflight.py at benchmark time.
 *
 *   nfs_inflight URL BLOCK DEPTH MODE LIMIT [SEED]
 *     URL    nfs://127.0.0.1/export/file?version=3&nfsport=N&mountport=M
 *     BLOCK  bytes per READ
 *     MODE   rand: random BLOCK-aligned offsets for LIMIT seconds
 *            randn: LIMIT random READs (for instruction counts)
 *            seq:  the file end to end, LIMIT times over (LIMIT >= 1)
 *
 * After mount and open it prints "ready" and waits for a line on stdin (so that the caller can
 * sample the server's CPU time around the READs alone), then prints one JSON line:
 * {"ops": ..., "bytes": ..., "seconds": ..., "errors": ...}.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nfsc/libnfs.h>

struct run {
	struct nfs_context *nfs;
	struct nfsfh *fh;
	uint64_t size, block, blocks, next_seq, passes_left, issued, max_ops;
	int random, in_flight, errors;
	double deadline;
	uint64_t ops, bytes, rng;
};

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t next_random(struct run *r)
{
	/* xorshift64*: cheap enough not to show up next to an RPC */
	r->rng ^= r->rng >> 12;
	r->rng ^= r->rng << 25;
	r->rng ^= r->rng >> 27;
	return r->rng * 2685821657736338717ULL;
}

static void issue(struct run *r);

static void done(int status, struct nfs_context *nfs, void *data, void *private_data)
{
	struct run *r = private_data;
	(void)nfs;
	(void)data;
	r->in_flight--;
	if (status < 0) {
		r->errors++;
		fprintf(stderr, "read failed: %s\n", (char *)data);
	} else {
		r->ops++;
		r->bytes += (uint64_t)status;
	}
	issue(r);
}

/* Start READs until DEPTH are in flight, or there is nothing left to read. */
static int depth;
static void issue(struct run *r)
{
	while (r->in_flight < depth && r->errors == 0) {
		uint64_t offset;
		if (r->random) {
			if (r->max_ops ? r->issued >= r->max_ops : now() >= r->deadline)
				return;
			offset = (next_random(r) % r->blocks) * r->block;
		} else {
			if (r->next_seq >= r->blocks) {
				if (r->passes_left <= 1)
					return;
				r->passes_left--;
				r->next_seq = 0;
			}
			offset = r->next_seq++ * r->block;
		}
		if (nfs_pread_async(r->nfs, r->fh, offset, r->block, done, r) < 0) {
			fprintf(stderr, "cannot queue a read: %s\n", nfs_get_error(r->nfs));
			r->errors++;
			return;
		}
		r->in_flight++;
		r->issued++;
	}
}

int main(int argc, char **argv)
{
	if (argc < 6) {
		fprintf(stderr, "usage: %s URL BLOCK DEPTH rand|seq LIMIT [SEED]\n", argv[0]);
		return 2;
	}
	struct run r = {0};
	r.block = strtoull(argv[2], NULL, 10);
	depth = atoi(argv[3]);
	r.random = strncmp(argv[4], "rand", 4) == 0;
	double limit = atof(argv[5]);
	if (strcmp(argv[4], "randn") == 0)
		r.max_ops = (uint64_t)limit;
	r.rng = argc > 6 ? strtoull(argv[6], NULL, 10) | 1 : 88172645463325252ULL;

	r.nfs = nfs_init_context();
	struct nfs_url *url = nfs_parse_url_full(r.nfs, argv[1]);
	if (url == NULL) {
		fprintf(stderr, "bad url: %s\n", nfs_get_error(r.nfs));
		return 1;
	}
	if (nfs_mount(r.nfs, url->server, url->path) != 0) {
		fprintf(stderr, "mount failed: %s\n", nfs_get_error(r.nfs));
		return 1;
	}
	if (nfs_open(r.nfs, url->file, O_RDONLY, &r.fh) != 0) {
		fprintf(stderr, "open failed: %s\n", nfs_get_error(r.nfs));
		return 1;
	}
	struct nfs_stat_64 st;
	if (nfs_fstat64(r.nfs, r.fh, &st) != 0) {
		fprintf(stderr, "fstat failed: %s\n", nfs_get_error(r.nfs));
		return 1;
	}
	r.size = st.nfs_size;
	r.blocks = r.size / r.block;
	if (r.blocks == 0) {
		fprintf(stderr, "file smaller than one block\n");
		return 1;
	}
	r.passes_left = limit < 1 ? 1 : (uint64_t)limit;

	printf("ready\n");
	fflush(stdout);
	char line[16];
	if (fgets(line, sizeof line, stdin) == NULL)
		return 1;

	double start = now();
	r.deadline = start + limit;
	issue(&r);
	while (r.in_flight > 0) {
		struct pollfd pfd = {.fd = nfs_get_fd(r.nfs), .events = nfs_which_events(r.nfs)};
		if (poll(&pfd, 1, 1000) < 0) {
			perror("poll");
			return 1;
		}
		if (nfs_service(r.nfs, pfd.revents) < 0) {
			fprintf(stderr, "nfs_service failed: %s\n", nfs_get_error(r.nfs));
			return 1;
		}
	}
	double seconds = now() - start;
	printf("{\"ops\": %" PRIu64 ", \"bytes\": %" PRIu64 ", \"seconds\": %.6f, \"errors\": %d}\n",
	       r.ops, r.bytes, seconds, r.errors);
	nfs_close(r.nfs, r.fh);
	nfs_destroy_url(url);
	nfs_destroy_context(r.nfs);
	return r.errors ? 1 : 0;
}
