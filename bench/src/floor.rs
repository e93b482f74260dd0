//! `ksg-bench floor`: what this machine charges for the two things no server can avoid on sparse
//! traffic, measured apart from any server.
//!
//! - **A wake-up**: a thread that sleeps until another one hands it work (a futex, as a
//!   condition variable, librdkafka's queues and an idle runtime's park use). Two threads hand a
//!   token back and forth through channels, each sleeping until it comes back: the process's CPU
//!   per hand-over. Both sides are the server's when one of its threads wakes another.
//! - **A small write to a sleeping reader over loopback TCP**: one `write` of 200 bytes that the
//!   kernel delivers to a reader blocked in `read` and wakes it, as a server's event reaches an
//!   idle client's connection. Two threads send 200 bytes back and forth over one TCP
//!   connection on 127.0.0.1; the writer's own CPU time (`CLOCK_THREAD_CPUTIME_ID`) around each
//!   `write` of one of them: the system call, the loopback delivery (the kernel runs the
//!   receiving side of TCP in the sender's context) and the reader's wake-up, which a server
//!   pays; not the reader's read, which its client pays.
//!
//! The wake-up's CPU is user + system time from `/proc/self/stat`, as the runs read a server's,
//! over `seconds` (the clock's ticks are 10 ms, so a second gives about 1%). A server that wakes
//! its threads W times a second and writes M events a second to idle clients spends at least
//! `W × wake_us + M × write_us` CPU-µs a second on them, whatever its own code costs.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{proc_usage, BoxError};

/// The size of one loopback message: an event of the benchmarks' records, framed.
const MESSAGE: usize = 200;

/// The two costs, CPU-µs each, and how many hand-overs and writes each was measured over.
#[derive(Debug, Clone, Copy)]
pub struct Floor {
    pub wake_us: f64,
    pub wakes: u64,
    pub write_us: f64,
    pub writes: u64,
}

impl Floor {
    /// One JSON object, as `ksg-bench floor` prints it.
    pub fn json(&self) -> String {
        format!(
            "{{\"name\":\"floor\",\"wake_us\":{:.2},\"wakes\":{},\"write_us\":{:.2},\"writes\":{}}}",
            self.wake_us, self.wakes, self.write_us, self.writes
        )
    }
}

/// Measures both, each for `seconds`.
pub fn measure(seconds: f64) -> Result<Floor, BoxError> {
    let window = Duration::from_secs_f64(seconds);
    let me = [std::process::id()];
    let (before, _) = proc_usage(&me);
    let wakes = wake_pair(window)?;
    let (after, _) = proc_usage(&me);
    let (write_cpu, writes) = loopback_pair(window)?;
    if wakes == 0 || writes == 0 {
        return Err("floor: nothing handed over in the window".into());
    }
    Ok(Floor {
        wake_us: (after - before) * 1e6 / wakes as f64,
        wakes,
        write_us: write_cpu.as_secs_f64() * 1e6 / writes as f64,
        writes,
    })
}

/// The calling thread's CPU time so far.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to fill; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Two threads hand a token back and forth through channels until `window` has passed: the
/// hand-overs made, each of which woke a sleeping thread.
fn wake_pair(window: Duration) -> Result<u64, BoxError> {
    let (to_other, other_rx) = mpsc::channel::<bool>();
    let (to_me, my_rx) = mpsc::channel::<()>();
    let other = std::thread::spawn(move || {
        // `true`: hand it back; `false`: stop.
        while let Ok(true) = other_rx.recv() {
            if to_me.send(()).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let mut rounds = 0u64;
    while start.elapsed() < window {
        to_other.send(true)?;
        my_rx.recv()?;
        rounds += 1;
    }
    let _ = to_other.send(false);
    other
        .join()
        .map_err(|_| "floor: the other thread panicked")?;
    Ok(rounds * 2)
}

/// Two threads send [`MESSAGE`] bytes back and forth over one loopback TCP connection until
/// `window` has passed, each message to a reader blocked in `read`: this thread's CPU time in
/// its writes, and how many it made.
fn loopback_pair(window: Duration) -> Result<(Duration, u64), BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut mine = TcpStream::connect(listener.local_addr()?)?;
    let (mut theirs, _) = listener.accept()?;
    mine.set_nodelay(true)?;
    theirs.set_nodelay(true)?;
    let other = std::thread::spawn(move || {
        let mut buf = [0u8; MESSAGE];
        // Echoes every message until the connection closes.
        while theirs.read_exact(&mut buf).is_ok() {
            if theirs.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let mut buf = [7u8; MESSAGE];
    let start = Instant::now();
    let mut writes = 0u64;
    let mut in_writes = Duration::ZERO;
    while start.elapsed() < window {
        let before = thread_cpu();
        mine.write_all(&buf)?;
        in_writes += thread_cpu().saturating_sub(before);
        writes += 1;
        // The echo: by the time it is back, the other side sleeps in `read` again.
        mine.read_exact(&mut buf)?;
    }
    drop(mine);
    other
        .join()
        .map_err(|_| "floor: the other thread panicked")?;
    Ok((in_writes, writes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_costs_are_measured_over_hand_overs_that_happened() {
        let floor = measure(0.3).unwrap();
        assert!(floor.wakes >= 2 && floor.wakes % 2 == 0, "{floor:?}");
        assert!(floor.writes >= 1, "{floor:?}");
        // Two threads taking turns for 0.3 s keep one core busy: the clock's 10-ms ticks see
        // it; a write is a system call, which takes CPU time.
        assert!(floor.wake_us > 0.0 && floor.write_us > 0.0, "{floor:?}");
        let json: serde_json::Value = serde_json::from_str(&floor.json()).unwrap();
        assert_eq!(json["name"], "floor");
        assert_eq!(json["wakes"], floor.wakes);
    }
}
