// SPDX-License-Identifier: GPL-2.0-only OR MIT
/* "Dual MIT/GPL": the kernel counts it as GPL-compatible, which the
 * bpf_probe_read_{user,kernel} helpers require. */
/* portd's failure witness, syscall-tracepoint path (see src/observe/witness/mod.rs).
 *
 * Counts failed ephemeral-port allocations, only where the kernel was
 * choosing the port:
 *   - TCP connect() on a socket with no local port         -> -EADDRNOTAVAIL
 *   - bind(addr, 0) on an inet socket                       -> -EADDRINUSE
 *   - UDP connect()/sendto() on a socket with no local port -> -EAGAIN
 * Only the syscall exits are traced, and they return at once unless the
 * result is one of those errors: a connect() that succeeds costs one
 * comparison. On such a failure the arguments come from the user registers
 * saved at entry (bpf_task_pt_regs; x86_64), the sockaddr from the caller's
 * memory (the syscall has not returned yet), and the socket's state through
 * the fd: a socket still without a local port after the failure had none
 * (a port that was asked for stays bound), so the kernel was choosing one.
 * Counts go to a bounded hash keyed by what is counted: network namespace,
 * kind, local address, destination (TCP only) and comm, with the last
 * process (tgid in portd's PID namespace) in the value, so short-lived
 * processes share one entry. Each key also carries the generation portd
 * set when it was counted: at each poll portd starts the next generation,
 * reads the keys of the last two and drains (reads, then deletes) older
 * ones, so the map holds only what failed in the last two polls. A program
 * that finds, after counting, that its generation is two or more behind
 * may have counted into a drained key: it counts that in `dropped` too
 * (at most a missed failure, never a silent one). When that map is full, the
 * failure is counted in `targets`, keyed by destination or pool alone (no
 * comm), so a destination not seen yet still has room; only when both are
 * full is it counted in `dropped`, which portd exports.
 * Only namespaces that portd puts into `watch_netns` are counted.
 *
 * Rebuild with src/observe/witness/bpf/build.sh (Debian 12 clang 14); the object is
 * committed and embedded with include_bytes!. */
#include "core.h"

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define EAGAIN 11
#define EADDRINUSE 98
#define EADDRNOTAVAIL 99

#define KIND_TCP_CONNECT 1
#define KIND_BIND0 2
#define KIND_UDP_AUTOBIND 3

#define MAX_PID_LEVELS 8

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* portd's PID namespace (inode), set by the loader. */
volatile const __u32 pidns_ino = 0;

struct wkey {
    __u32 netns;
    __u32 gen;
    __u8 kind;
    __u8 family;
    __u16 dport;
    __u8 sotype;
    __u8 pad[3];
    __u8 laddr[16];
    __u8 daddr[16];
    char comm[16];
};

/* The last process counted under a key, and how many failures. */
struct wval {
    __u64 count;
    __u32 pid;
    __u32 pad;
    char comm[16];
};

/* Per destination or pool and comm. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 4096);
    __type(key, struct wkey);
    __type(value, struct wval);
} failures SEC(".maps");

/* Per destination or pool (comm zero), for what `failures` had no room for. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1024);
    __type(key, struct wkey);
    __type(value, struct wval);
} targets SEC(".maps");

/* [0]: the generation portd counts in now. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u32);
} generation SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 256);
    __type(key, __u32);
    __type(value, __u8);
} watch_netns SEC(".maps");

/* [0]: failures not counted because `failures` and `targets` were full;
 * [1]: failures counted into a generation portd may have drained already. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, __u64);
} dropped SEC(".maps");

struct sys_exit_ctx {
    __u64 common;
    __s32 nr;
    __s32 pad;
    __s64 ret;
};

static __always_inline void count_drop(__u32 slot)
{
    __u64 *v = bpf_map_lookup_elem(&dropped, &slot);
    if (v)
        __sync_fetch_and_add(v, 1);
}

/* The socket behind `fd` of the current task, or 0. */
static __always_inline struct socket *fd_socket(__u64 fd)
{
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    struct files_struct *files = 0;
    struct fdtable *fdt = 0;
    struct file **fds = 0;
    struct file *file = 0;
    struct inode *inode = 0;
    unsigned int max_fds = 0;
    unsigned short mode = 0;
    void *priv = 0;

    CORE_READ(&files, task->files);
    if (!files)
        return 0;
    CORE_READ(&fdt, files->fdt);
    if (!fdt)
        return 0;
    CORE_READ(&max_fds, fdt->max_fds);
    if (fd >= max_fds)
        return 0;
    CORE_READ(&fds, fdt->fd);
    if (!fds)
        return 0;
    bpf_probe_read_kernel(&file, sizeof(file), fds + fd);
    if (!file)
        return 0;
    CORE_READ(&inode, file->f_inode);
    if (!inode)
        return 0;
    CORE_READ(&mode, inode->i_mode);
    if ((mode & S_IFMT) != S_IFSOCK)
        return 0;
    CORE_READ(&priv, file->private_data);
    return (struct socket *)priv;
}

/* The inet sock behind `fd`, with its family and type, or 0. */
static __always_inline struct sock *fd_sock(__u64 fd, unsigned short *family, short *type)
{
    struct socket *sock = fd_socket(fd);
    struct sock *sk = 0;

    if (!sock)
        return 0;
    CORE_READ(&sk, sock->sk);
    if (!sk)
        return 0;
    CORE_READ(family, sk->__sk_common.skc_family);
    if (*family != AF_INET && *family != AF_INET6)
        return 0;
    CORE_READ(type, sock->type);
    return sk;
}

struct dest {
    __u8 family;
    __u16 port;
    __u8 addr[16];
};

/* Reads an inet sockaddr from user memory (family, port, address). */
static __always_inline int read_sockaddr(struct dest *p, __u64 uaddr, __u64 len)
{
    __u8 sa[16] = {};

    if (!uaddr || len < 16)
        return -1;
    if (bpf_probe_read_user(sa, 16, (const void *)uaddr))
        return -1;
    __u16 family = *(__u16 *)sa;
    p->port = ((__u16)sa[2] << 8) | sa[3];
    if (family == AF_INET) {
        p->family = AF_INET;
        __builtin_memcpy(p->addr, sa + 4, 4);
        return 0;
    }
    if (family == AF_INET6 && len >= 24) {
        p->family = AF_INET6;
        if (bpf_probe_read_user(p->addr, 16, (const void *)(uaddr + 8)))
            return -1;
        return 0;
    }
    return -1;
}

/* The failed syscall's first three arguments. */
static __always_inline int args(__u64 *fd, __u64 *uaddr, __u64 *len)
{
    struct pt_regs *regs = bpf_task_pt_regs(bpf_get_current_task_btf());
    if (!regs)
        return -1;
    if (CORE_READ(fd, regs->di) || CORE_READ(uaddr, regs->si) || CORE_READ(len, regs->dx))
        return -1;
    return 0;
}

/* The inet socket behind `fd` if it has no local port and lives in a
 * watched namespace: fills the key's namespace, family, socket type and
 * local address. */
static __always_inline struct sock *unbound_sock(__u64 fd, struct wkey *k, short *type)
{
    unsigned short family = 0;
    __u16 num = 0;
    struct net *net = 0;

    struct sock *sk = fd_sock(fd, &family, type);
    if (!sk)
        return 0;
    CORE_READ(&num, sk->__sk_common.skc_num);
    if (num)
        return 0; /* it has a port: one that was asked for */
    CORE_READ(&net, sk->__sk_common.skc_net.net);
    if (!net)
        return 0;
    CORE_READ(&k->netns, net->ns.inum);
    if (!bpf_map_lookup_elem(&watch_netns, &k->netns))
        return 0;
    k->family = family;
    k->sotype = *type;
    if (family == AF_INET)
        CORE_READ((__u32 *)k->laddr, sk->__sk_common.skc_rcv_saddr);
    else
        bpf_probe_read_kernel(k->laddr, 16,
                              __builtin_preserve_access_index(&sk->__sk_common.skc_v6_rcv_saddr));
    return sk;
}

/* comm of the thread group leader, and its tgid as portd's PID namespace
 * numbers it: the level of struct pid whose namespace is portd's (0: the
 * process is not visible from portd). */
static __always_inline void pid_and_comm(struct wkey *k, __u32 *tgid)
{
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    struct task_struct *leader = 0;
    struct pid *pid = 0;
    unsigned int level = 0;

    CORE_READ(&leader, task->group_leader);
    if (!leader)
        return;
    bpf_probe_read_kernel(k->comm, sizeof(k->comm),
                          __builtin_preserve_access_index(&leader->comm));
    CORE_READ(&pid, leader->thread_pid);
    if (!pid)
        return;
    CORE_READ(&level, pid->level);
    char *first = (char *)__builtin_preserve_access_index(&pid->numbers[0]);
    for (unsigned int i = 0; i < MAX_PID_LEVELS; i++) {
        if (i > level)
            break;
        struct pid_namespace *ns = 0;
        unsigned int ino = 0;
        int nr = 0;
        bpf_probe_read_kernel(&ns, sizeof(ns), first + i * sizeof(struct upid) + sizeof(void *));
        if (!ns)
            return;
        CORE_READ(&ino, ns->ns.inum);
        if (ino == pidns_ino) {
            bpf_probe_read_kernel(&nr, sizeof(nr), first + i * sizeof(struct upid));
            *tgid = nr;
            return;
        }
    }
}

/* One more failure under `k` in `map`, by process `pid` named `comm`;
 * nonzero when the map has no room for a new key. */
static __always_inline int add(void *map, struct wkey *k, __u32 pid, const char *comm)
{
    struct wval *v = bpf_map_lookup_elem(map, k);
    if (!v) {
        struct wval fresh = {.count = 1, .pid = pid};
        __builtin_memcpy(fresh.comm, comm, sizeof(fresh.comm));
        if (!bpf_map_update_elem(map, k, &fresh, BPF_NOEXIST))
            return 0;
        v = bpf_map_lookup_elem(map, k); /* another CPU inserted it */
        if (!v)
            return -1;
    }
    __sync_fetch_and_add(&v->count, 1);
    v->pid = pid;
    __builtin_memcpy(v->comm, comm, sizeof(v->comm));
    return 0;
}

/* After counting under `k`: whether portd may have drained its generation
 * meanwhile (it drains a generation only once two newer ones started). */
static __always_inline void check_late(struct wkey *k)
{
    __u32 zero = 0;
    __u32 *gen = bpf_map_lookup_elem(&generation, &zero);
    if (gen && *gen - k->gen >= 2)
        count_drop(1);
}

static __always_inline void count(struct wkey *k)
{
    __u32 zero = 0, pid = 0;
    char comm[16];

    pid_and_comm(k, &pid);
    __u32 *gen = bpf_map_lookup_elem(&generation, &zero);
    if (gen)
        k->gen = *gen;
    __builtin_memcpy(comm, k->comm, sizeof(comm));
    if (!add(&failures, k, pid, comm))
        return check_late(k);
    __builtin_memset(k->comm, 0, sizeof(k->comm));
    if (!add(&targets, k, pid, comm))
        return check_late(k);
    count_drop(0);
}

SEC("tracepoint/syscalls/sys_exit_connect")
int exit_connect(struct sys_exit_ctx *ctx)
{
    __s64 ret = ctx->ret;
    if (ret != -EADDRNOTAVAIL && ret != -EAGAIN)
        return 0;
    __u64 fd = 0, uaddr = 0, len = 0;
    struct wkey k = {};
    struct dest d = {};
    short type = 0;
    if (args(&fd, &uaddr, &len) || !unbound_sock(fd, &k, &type))
        return 0;
    if (type == SOCK_STREAM && ret == -EADDRNOTAVAIL) {
        if (read_sockaddr(&d, uaddr, len))
            return 0;
        k.kind = KIND_TCP_CONNECT;
        k.family = d.family;
        k.dport = d.port;
        __builtin_memcpy(k.daddr, d.addr, 16);
    } else if (type == SOCK_DGRAM && ret == -EAGAIN) {
        k.kind = KIND_UDP_AUTOBIND;
    } else {
        return 0;
    }
    count(&k);
    return 0;
}

SEC("tracepoint/syscalls/sys_exit_bind")
int exit_bind(struct sys_exit_ctx *ctx)
{
    if (ctx->ret != -EADDRINUSE)
        return 0;
    __u64 fd = 0, uaddr = 0, len = 0;
    struct wkey k = {};
    struct dest d = {};
    short type = 0;
    if (args(&fd, &uaddr, &len) || read_sockaddr(&d, uaddr, len))
        return 0;
    if (d.port)
        return 0; /* a port was asked for: a conflict, not exhaustion */
    if (!unbound_sock(fd, &k, &type))
        return 0;
    k.kind = KIND_BIND0;
    /* The pool: the address bind() asked for. */
    __builtin_memcpy(k.laddr, d.addr, 16);
    count(&k);
    return 0;
}

SEC("tracepoint/syscalls/sys_exit_sendto")
int exit_sendto(struct sys_exit_ctx *ctx)
{
    if (ctx->ret != -EAGAIN)
        return 0;
    __u64 fd = 0, uaddr = 0, len = 0;
    struct wkey k = {};
    short type = 0;
    if (args(&fd, &uaddr, &len) || !unbound_sock(fd, &k, &type) || type != SOCK_DGRAM)
        return 0;
    k.kind = KIND_UDP_AUTOBIND;
    count(&k);
    return 0;
}
