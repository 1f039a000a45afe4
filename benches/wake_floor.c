/*
 * The floor of an idle poll on this machine: what a process that does
 * nothing but wake on a timerfd every second costs, and what the reads of
 * an idle poll add (docs/benchmarks.md, "Idle poll cost: nothing built for
 * an unchanged poll"). No root needed; reads only.
 *
 *   cc -O2 -o /tmp/wake_floor benches/wake_floor.c
 *   /tmp/wake_floor & /tmp/wake_floor reads & wait
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/timerfd.h>
#include <unistd.h>

static double cpu_us(void)
{
	struct rusage r;
	getrusage(RUSAGE_SELF, &r);
	return (r.ru_utime.tv_sec + r.ru_stime.tv_sec) * 1e6 + r.ru_utime.tv_usec +
	       r.ru_stime.tv_usec;
}

int main(int argc, char **argv)
{
	static const char *files[] = {
		"/proc/sys/net/ipv4/ip_local_port_range", "/proc/net/sockstat",
		"/proc/net/sockstat6", "/proc/loadavg",
	};
	enum { NFILES = sizeof files / sizeof *files, WAKES = 20 };
	int reads = argc > 1, fds[NFILES];
	char buf[4096];
	for (int i = 0; i < NFILES; i++)
		fds[i] = open(files[i], O_RDONLY | O_CLOEXEC);
	int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	struct itimerspec every_second = { { 1, 0 }, { 1, 0 } };
	timerfd_settime(tfd, 0, &every_second, NULL);
	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = { .events = EPOLLIN | EPOLLET }, out;
	epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
	uint64_t expired;
	epoll_wait(ep, &out, 1, -1);
	(void)!read(tfd, &expired, sizeof expired);
	double before = cpu_us();
	for (int k = 0; k < WAKES; k++) {
		epoll_wait(ep, &out, 1, -1);
		(void)!read(tfd, &expired, sizeof expired);
		for (int i = 0; reads && i < NFILES; i++)
			(void)!pread(fds[i], buf, sizeof buf - 1, 0);
	}
	printf("%s: %.1f µs of CPU per wake-up\n",
	       reads ? "wake-up and the idle poll's 4 reads" : "wake-up alone",
	       (cpu_us() - before) / WAKES);
	return 0;
}
