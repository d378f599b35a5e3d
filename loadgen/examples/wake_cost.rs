//! What one sleep costs the thread that sleeps: a thread on CPU 1 blocks
//! reading an eventfd that a thread on CPU 0 writes every GAP microseconds
//! (busy-waiting between writes, so the writer's timing is exact), and the
//! reader's own CPU time (RUSAGE_THREAD) is divided by its wakeups.
//!
//! A client faster than its server sleeps once per lull in the answers and
//! pays this each time; a saturated client (wrk on one CPU) never does.
//!
//!   cargo run --release -p bypass-load --example wake_cost -- 5 25 100
//!
//! Arguments are gaps in microseconds (default 5 25 100). Stop other load on
//! the two CPUs first (e.g. `kill -STOP` a server under test).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn pin(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t and `cpu` is below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is this thread; `set` outlives the call.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    assert_eq!(
        rc,
        0,
        "pinning to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
}

fn thread_cpu() -> Duration {
    // SAFETY: rusage is plain data; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    assert_eq!(rc, 0, "getrusage: {}", std::io::Error::last_os_error());
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn measure(gap: Duration) -> (u32, Duration) {
    // SAFETY: plain syscall; the result is checked.
    let efd = unsafe { libc::eventfd(0, 0) };
    assert!(efd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            pin(0);
            let one = 1u64;
            while !stop.load(Ordering::Relaxed) {
                let due = Instant::now() + gap;
                while Instant::now() < due {}
                // SAFETY: writes 8 bytes from a live u64 to our eventfd.
                unsafe { libc::write(efd, (&one as *const u64).cast(), 8) };
            }
        })
    };
    pin(1);
    let wakes = (200_000 / (gap.as_micros() as u32 + 1)).max(1000);
    let before = thread_cpu();
    let mut value = 0u64;
    for _ in 0..wakes {
        // SAFETY: reads 8 bytes into a live u64 from our eventfd.
        let n = unsafe { libc::read(efd, (&mut value as *mut u64).cast(), 8) };
        assert_eq!(n, 8, "eventfd read: {}", std::io::Error::last_os_error());
    }
    let cpu = thread_cpu() - before;
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer thread");
    // SAFETY: closes the eventfd opened above, once.
    unsafe { libc::close(efd) };
    (wakes, cpu)
}

fn main() {
    let gaps: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("gaps are whole microseconds"))
        .collect();
    let gaps = if gaps.is_empty() {
        vec![5, 25, 100]
    } else {
        gaps
    };
    for gap in gaps {
        let (wakes, cpu) = measure(Duration::from_micros(gap));
        println!(
            "gap {gap:>4} us: {wakes:>6} wakeups, {:.2} us of the sleeper's CPU per wakeup",
            cpu.as_secs_f64() * 1e6 / f64::from(wakes)
        );
    }
}
