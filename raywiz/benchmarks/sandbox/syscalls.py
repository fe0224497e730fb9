"""A seccomp filter: system calls a sample is refused, whatever its uid, namespaces or Landlock ABI.

Runs inside the sandbox (the harness loads it by path): the standard library only. The filter is a few
classic-BPF instructions handed to prctl(PR_SET_SECCOMP) through ctypes; it is inherited by every
child and cannot be removed. Refused calls fail with EACCES (Python: PermissionError).

  - sockets: socket() of every family (no TCP, UDP, pathname or abstract unix socket, netlink...);
    socketpair() only as AF_UNIX SOCK_STREAM (asyncio's self-pipe, multiprocessing.Pipe), which is
    connected to itself and cannot reach any other address;
  - io_uring (it would make those calls without the filter seeing them);
  - mount changes, new namespaces, ptrace, process_vm_* and pidfd_getfd, bpf, userfaultfd, perf,
    keyrings;
  - with `refuse_shared_memory` (no cgroup counts what the sample's processes share): memfd_create,
    memfd_secret and System V shmget;
  - another ABI than the native one (x32 calls on x86_64, 32-bit calls): refused outright.
"""

from __future__ import annotations

import errno
import os
import platform
import struct

# Each architecture's numbers (x86_64: arch/x86/entry/syscalls/syscall_64.tbl; aarch64: the generic table).
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
X32_BIT = 0x40000000
NAMES = ("socket", "socketpair", "memfd_create", "memfd_secret", "shmget",
         "io_uring_setup", "io_uring_enter", "io_uring_register", "mount", "umount2", "pivot_root", "unshare",
         "setns", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
         "ptrace", "process_vm_readv", "process_vm_writev", "bpf", "userfaultfd", "perf_event_open",
         "add_key", "request_key", "keyctl", "pidfd_getfd")
NUMBERS = {  # in the order of NAMES
    "x86_64": (41, 53, 319, 447, 29, 425, 426, 427, 165, 166, 155, 272, 308, 428, 429, 430, 431, 432, 433, 442,
               101, 310, 311, 321, 323, 298, 248, 249, 250, 438),
    "aarch64": (198, 199, 279, 447, 194, 425, 426, 427, 40, 39, 41, 97, 268, 428, 429, 430, 431, 432, 433, 442,
                117, 270, 271, 280, 282, 241, 217, 218, 219, 438),
}
SYSCALLS = {machine: dict(zip(NAMES, numbers, strict=True)) for machine, numbers in NUMBERS.items()}
SHARED_MEMORY = ("memfd_create", "memfd_secret", "shmget")
ALWAYS = tuple(n for n in NAMES if n not in SHARED_MEMORY + ("socketpair",))
AF_UNIX, SOCK_STREAM, SOCK_TYPE_MASK = 1, 1, 0xF

# Classic BPF (linux/filter.h, linux/seccomp.h).
BPF_LD_W_ABS, BPF_JEQ_K, BPF_JGE_K, BPF_AND_K, BPF_RET_K = 0x20, 0x15, 0x35, 0x54, 0x06
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO, SECCOMP_RET_KILL_PROCESS = 0x7FFF0000, 0x00050000, 0x80000000
OFF_NR, OFF_ARCH = 0, 4
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2


def _arg(i: int) -> int:
    return 16 + 8 * i  # low 32 bits of seccomp_data.args[i] (little-endian: both supported arches)


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def build_filter(machine: str, refuse_shared_memory: bool) -> bytes:
    """The filter's instructions for `machine` (platform.machine())."""
    numbers = SYSCALLS[machine]
    refused = [numbers[n] for n in ALWAYS] + ([numbers[n] for n in SHARED_MEMORY] if refuse_shared_memory else [])
    deny = SECCOMP_RET_ERRNO | errno.EACCES
    prog = [
        _insn(BPF_LD_W_ABS, 0, 0, OFF_ARCH),
        _insn(BPF_JEQ_K, 1, 0, AUDIT_ARCH[machine]),
        _insn(BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),  # a foreign ABI: its numbers mean other calls
        _insn(BPF_LD_W_ABS, 0, 0, OFF_NR),
    ]
    if machine == "x86_64":
        prog += [_insn(BPF_JGE_K, 0, 1, X32_BIT), _insn(BPF_RET_K, 0, 0, deny)]
    for nr in refused:  # if nr == this: refuse
        prog += [_insn(BPF_JEQ_K, 0, 1, nr), _insn(BPF_RET_K, 0, 0, deny)]
    # socketpair: only AF_UNIX + SOCK_STREAM (flags such as SOCK_CLOEXEC masked off).
    prog += [
        _insn(BPF_JEQ_K, 0, 7, numbers["socketpair"]),
        _insn(BPF_LD_W_ABS, 0, 0, _arg(0)),
        _insn(BPF_JEQ_K, 0, 4, AF_UNIX),
        _insn(BPF_LD_W_ABS, 0, 0, _arg(1)),
        _insn(BPF_AND_K, 0, 0, SOCK_TYPE_MASK),
        _insn(BPF_JEQ_K, 0, 1, SOCK_STREAM),
        _insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        _insn(BPF_RET_K, 0, 0, deny),
        _insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ]
    return b"".join(prog)


def install(refuse_shared_memory: bool) -> str:
    """Install the filter on this process (and so on everything it starts); returns what it refuses.
    Raises OSError where the kernel or the architecture has no seccomp filter."""
    import ctypes

    machine = platform.machine()
    if machine not in SYSCALLS:
        raise OSError(errno.ENOSYS, f"no syscall table for {machine}")
    code = build_filter(machine, refuse_shared_memory)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buf = ctypes.create_string_buffer(code, len(code))
    prog = SockFprog(len(code) // 8, ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, None, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"PR_SET_NO_NEW_PRIVS: {os.strerror(err)}")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp: {os.strerror(err)}")
    return "sockets, io_uring, mounts, namespaces, ptrace" + (", memfd/shm" if refuse_shared_memory else "")
