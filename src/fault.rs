//! Fault-injection points for the crash tests. `AER_FAULT_PAUSE=<point>:<n>` makes the process
//! stop at the n-th pass (from 1) through the named point: it prints
//! `aer: paused at fault point <point>:<n>` to stderr and sleeps until killed. A test then kills
//! it with SIGKILL and runs again, to show that a crash there loses and repeats nothing. Without
//! the variable a point costs one relaxed atomic load.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};

const UNKNOWN: u8 = 0;
const OFF: u8 = 1;
const ON: u8 = 2;
static ARMED: AtomicU8 = AtomicU8::new(UNKNOWN);
static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
static COUNTS: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

fn target() -> &'static Option<(String, u64)> {
    TARGET.get_or_init(|| {
        let spec = std::env::var("AER_FAULT_PAUSE").ok()?;
        let (point, n) = spec.rsplit_once(':')?;
        Some((point.to_string(), n.parse().ok()?))
    })
}

/// Passes through the named point; pauses for good when it is the armed one.
pub fn point(name: &'static str) {
    match ARMED.load(Ordering::Relaxed) {
        OFF => return,
        UNKNOWN => {
            let on = target().is_some();
            ARMED.store(if on { ON } else { OFF }, Ordering::Relaxed);
            if !on {
                return;
            }
        }
        _ => {}
    }
    let Some((point, n)) = target() else { return };
    if point != name {
        return;
    }
    let count = {
        let mut counts = COUNTS.lock().unwrap_or_else(|e| e.into_inner());
        let c = counts.entry(name).or_default();
        *c += 1;
        *c
    };
    if count == *n {
        let mut err = std::io::stderr();
        let _ = writeln!(err, "aer: paused at fault point {name}:{n}");
        let _ = err.flush();
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}
