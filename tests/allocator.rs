//! Contract test of the binary's allocator (jemalloc with background threads, `src/main.rs`):
//! memory freed after a peak goes back to the system by itself, with no further allocation.
//! The gateway's "memory given back" figure (docs/benchmarks.md, WM) rests on this; glibc's
//! malloc kept most of such a peak.
#![cfg(feature = "jemalloc")]

use std::time::{Duration, Instant};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// This process's resident set, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

#[test]
fn freed_memory_goes_back_to_the_system_without_more_allocation() {
    let base = rss_kib();
    // 256 MiB in event-sized pieces, touched, as a peak of queued events would be.
    let mut pieces: Vec<Vec<u8>> = (0..(256 << 20) / 512).map(|i| vec![i as u8; 512]).collect();
    let peak = rss_kib();
    assert!(
        peak > base + (200 << 10),
        "the peak did not show in the RSS ({base} -> {peak} KiB)"
    );
    // One piece in 1,024 stays (a few long-lived events): the freed memory is not one block at
    // the heap's top, which even glibc would give back.
    let kept: Vec<Vec<u8>> = pieces.drain(..).step_by(1024).collect();
    drop(pieces);
    // jemalloc purges dirty pages after dirty_decay_ms (10 s) from its background thread;
    // this thread allocates nothing more while it waits.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut now = rss_kib();
    while now > base + (32 << 10) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        now = rss_kib();
    }
    assert!(
        now <= base + (32 << 10),
        "RSS still {now} KiB 60 s after freeing a {peak} KiB peak (base {base} KiB)"
    );
    // The kept pieces stay alive until here.
    drop(std::hint::black_box(kept));
}
