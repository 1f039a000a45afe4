/* Minimal CO-RE header for witness.bpf.c: only the kernel types and fields
 * the program reads. Every record is preserve_access_index, so libbpf-style
 * loaders (aya) relocate each field offset against the running kernel's BTF:
 * the layout below need not match any kernel, only the names must.
 * Helper numbers are the stable UAPI ones (include/uapi/linux/bpf.h). */
#ifndef PORTD_WITNESS_CORE_H
#define PORTD_WITNESS_CORE_H

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed int __s32;
typedef signed long long __s64;

#define SEC(name) __attribute__((section(name), used))
#define __always_inline inline __attribute__((always_inline))

struct task_struct;
struct pt_regs;

/* Map definitions in the BTF-defined style (".maps"). */
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

enum { BPF_MAP_TYPE_HASH = 1, BPF_MAP_TYPE_ARRAY = 2 };
enum { BPF_ANY = 0, BPF_NOEXIST = 1 };

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value, __u64 flags) = (void *)2;
static long (*bpf_map_delete_elem)(void *map, const void *key) = (void *)3;
static __u64 (*bpf_get_current_pid_tgid)(void) = (void *)14;
static __u64 (*bpf_get_current_task)(void) = (void *)35;
static long (*bpf_probe_read_user)(void *dst, __u32 size, const void *unsafe_ptr) = (void *)112;
static long (*bpf_probe_read_kernel)(void *dst, __u32 size, const void *unsafe_ptr) = (void *)113;
static struct task_struct *(*bpf_get_current_task_btf)(void) = (void *)158;
static struct pt_regs *(*bpf_task_pt_regs)(struct task_struct *task) = (void *)175;

/* CO-RE read of one field: the access expression is relocated. */
#define CORE_READ(dst, src) \
    bpf_probe_read_kernel((void *)(dst), sizeof(*(dst)), (const void *)__builtin_preserve_access_index(&(src)))

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

/* x86_64: the user registers saved at syscall entry; di, si, dx still
 * hold the first three arguments when the syscall exits. */
struct pt_regs { unsigned long di; unsigned long si; unsigned long dx; };
struct ns_common { unsigned int inum; };
struct net { struct ns_common ns; };
typedef struct { struct net *net; } possible_net_t;
struct in6_addr { union { __u8 u6_addr8[16]; } in6_u; };
struct sock_common {
    union { struct { __u32 skc_daddr; __u32 skc_rcv_saddr; }; };
    union { struct { __u16 skc_dport; __u16 skc_num; }; };
    unsigned short skc_family;
    possible_net_t skc_net;
    struct in6_addr skc_v6_rcv_saddr;
};
struct sock { struct sock_common __sk_common; };
struct socket { short type; struct sock *sk; };
struct inode { unsigned short i_mode; };
struct file { struct inode *f_inode; void *private_data; };
struct fdtable { unsigned int max_fds; struct file **fd; };
struct files_struct { struct fdtable *fdt; };
struct pid_namespace { unsigned int level; struct ns_common ns; };
struct upid { int nr; struct pid_namespace *ns; };
struct pid { unsigned int level; struct upid numbers[1]; };
struct task_struct {
    struct files_struct *files;
    struct task_struct *group_leader;
    struct pid *thread_pid;
    char comm[16];
};

#pragma clang attribute pop

#endif
