/*
 * LD_PRELOAD shim for the differential tests: a netlink socket opened by the
 * process becomes a unix SOCK_SEQPACKET connection to $VDPA_NL_SHIM_PATH,
 * where tests/vdpa/nlbridge.py answers like the kernel's generic netlink
 * (family "vdpa") backed by dataplane's VdpaManagement.  Only the calls
 * libmnl makes on that socket are redirected; everything else passes through.
 */
#include <dlfcn.h>
#include <errno.h>
#include <linux/netlink.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef RTLD_NEXT
#define RTLD_NEXT ((void *)-1l)
#endif

static int fake_fd = -1;

static void *next(const char *name)
{
	return dlsym(RTLD_NEXT, name);
}

int socket(int domain, int type, int protocol)
{
	int (*real_socket)(int, int, int) = next("socket");
	int (*real_connect)(int, const struct sockaddr *, socklen_t) = next("connect");
	const char *path = getenv("VDPA_NL_SHIM_PATH");
	struct sockaddr_un sa;
	int fd, e;

	if (domain != AF_NETLINK || !path)
		return real_socket(domain, type, protocol);
	fd = real_socket(AF_UNIX, SOCK_SEQPACKET | (type & SOCK_CLOEXEC), 0);
	if (fd < 0)
		return fd;
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	strncpy(sa.sun_path, path, sizeof(sa.sun_path) - 1);
	if (real_connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	fake_fd = fd;
	return fd;
}

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
	int (*real_bind)(int, const struct sockaddr *, socklen_t) = next("bind");

	if (fd >= 0 && fd == fake_fd)
		return 0;
	return real_bind(fd, addr, len);
}

int getsockname(int fd, struct sockaddr *addr, socklen_t *len)
{
	int (*real_getsockname)(int, struct sockaddr *, socklen_t *) = next("getsockname");
	struct sockaddr_nl nl;

	if (fd < 0 || fd != fake_fd)
		return real_getsockname(fd, addr, len);
	memset(&nl, 0, sizeof(nl));
	nl.nl_family = AF_NETLINK;
	nl.nl_pid = (unsigned int)getpid();
	memcpy(addr, &nl, *len < sizeof(nl) ? *len : sizeof(nl));
	*len = sizeof(nl);
	return 0;
}

int setsockopt(int fd, int level, int name, const void *val, socklen_t len)
{
	int (*real_setsockopt)(int, int, int, const void *, socklen_t) = next("setsockopt");

	if (fd >= 0 && fd == fake_fd)
		return 0;
	return real_setsockopt(fd, level, name, val, len);
}

ssize_t sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *addr, socklen_t alen)
{
	ssize_t (*real_sendto)(int, const void *, size_t, int, const struct sockaddr *, socklen_t) = next("sendto");

	if (fd >= 0 && fd == fake_fd)
		return real_sendto(fd, buf, len, flags, NULL, 0);
	return real_sendto(fd, buf, len, flags, addr, alen);
}

ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
{
	ssize_t (*real_recvmsg)(int, struct msghdr *, int) = next("recvmsg");
	void *name = msg->msg_name;
	socklen_t namelen = msg->msg_namelen;
	struct sockaddr_nl nl;
	ssize_t ret;

	if (fd < 0 || fd != fake_fd)
		return real_recvmsg(fd, msg, flags);
	msg->msg_name = NULL;
	msg->msg_namelen = 0;
	ret = real_recvmsg(fd, msg, flags);
	msg->msg_name = name;
	msg->msg_namelen = namelen;
	if (name && namelen >= sizeof(nl)) {
		memset(&nl, 0, sizeof(nl));
		nl.nl_family = AF_NETLINK;
		memcpy(name, &nl, sizeof(nl));
		msg->msg_namelen = sizeof(nl);
	}
	return ret;
}
