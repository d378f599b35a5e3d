//! The test tree's stand-in for Docker's default seccomp profile: a filter, installed in the
//! child between fork and exec, under which `io_uring_setup`, `io_uring_enter` and
//! `io_uring_register` fail with EPERM while every other system call is allowed.
//!
//! The filter is a static program, so installing it allocates nothing after fork (the test
//! process has threads, and only async-signal-safe calls are allowed there).

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// io_uring_setup, io_uring_enter and io_uring_register: the same numbers on every
/// architecture (they came after the syscall tables were unified).
const IO_URING_SYSCALLS: [u32; 3] = [425, 426, 427];

#[cfg(target_arch = "x86_64")]
const NATIVE_ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const NATIVE_ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64

/// x32 system calls share the x86_64 audit arch and set this bit in the number.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// Classic BPF opcodes (linux/bpf_common.h).
const LD_W_ABS: u16 = 0x20; // BPF_LD (0) | BPF_W (0) | BPF_ABS (0x20)
const ALU_AND_K: u16 = 0x04 | 0x50; // BPF_ALU | BPF_AND | BPF_K
const JEQ_K: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K

/// Offsets in `struct seccomp_data`.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;

const fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The program: another architecture's system calls (i386 through `int 0x80`) kill the process
/// rather than pass, since their numbers mean other calls and the server makes none of them.
/// A static, so that the pointer handed to the kernel after fork is to memory that exists.
static PROGRAM: [libc::sock_filter; 10] = [
    /* 0 */ stmt(LD_W_ABS, ARCH_OFFSET),
    /* 1 */ jump(JEQ_K, NATIVE_ARCH, 1, 0), // native: to 3
    /* 2 */ stmt(RET_K, libc::SECCOMP_RET_KILL_PROCESS),
    /* 3 */ stmt(LD_W_ABS, NR_OFFSET),
    /* 4 */ stmt(ALU_AND_K, !X32_SYSCALL_BIT),
    /* 5 */ jump(JEQ_K, IO_URING_SYSCALLS[0], 3, 0), // to 9
    /* 6 */ jump(JEQ_K, IO_URING_SYSCALLS[1], 2, 0), // to 9
    /* 7 */ jump(JEQ_K, IO_URING_SYSCALLS[2], 1, 0), // to 9
    /* 8 */ stmt(RET_K, libc::SECCOMP_RET_ALLOW),
    /* 9 */ stmt(RET_K, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
];

/// Makes `cmd` run its program with io_uring refused (EPERM), as in a default Docker container.
pub fn deny_io_uring(cmd: &mut Command) -> &mut Command {
    // SAFETY: the closure only makes async-signal-safe system calls (prctl, seccomp) on
    // static data and a stack value; it allocates nothing and touches no lock.
    unsafe { cmd.pre_exec(install) }
}

fn install() -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: PROGRAM.len() as u16,
        filter: PROGRAM.as_ptr().cast_mut(),
    };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only; it lets an unprivileged
    // process install a filter and is required by the kernel for that.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `prog` points at PROGRAM, a static array of PROGRAM.len() instructions; the
    // kernel copies it during the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
