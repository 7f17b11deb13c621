//! Transparent huge pages, turned off for the process while a batch replay reads and sequences
//! its input ([`HugePagesOff`]).
//!
//! Reading builds a hundred megabytes and more of decoded events, written once and in order,
//! for which huge pages save nothing. On machines where fresh memory is costly (a VM whose
//! balloon hands free pages back to the host, as the one aer was measured on), each 2 MiB huge
//! page first touched costs the kernel more per byte than small pages do, and mimalloc asks for
//! huge pages for all its memory. So the reading phase runs with them off, and the engine after
//! it with the setting the process had (README, "Performance").
//!
//! The setting is the process's (`prctl(PR_SET_THP_DISABLE)`, Linux only; elsewhere this does
//! nothing). Guards nest and may overlap across threads: the first one turns huge pages off, the
//! last one dropped restores the setting found. If the process already ran with them off, it
//! stays so.

use std::sync::{Mutex, PoisonError};

/// Keeps transparent huge pages off for the process while alive; see the module documentation.
#[must_use = "huge pages are on again as soon as the guard is dropped"]
pub struct HugePagesOff(());

/// The guards alive, and whether huge pages were off before the first of them.
struct Guards {
    alive: usize,
    off_before: bool,
}

static GUARDS: Mutex<Guards> = Mutex::new(Guards {
    alive: 0,
    off_before: false,
});

impl HugePagesOff {
    pub fn new() -> Self {
        let mut guards = GUARDS.lock().unwrap_or_else(PoisonError::into_inner);
        if guards.alive == 0 {
            guards.off_before = disabled();
            if !guards.off_before {
                set_disabled(true);
            }
        }
        guards.alive += 1;
        HugePagesOff(())
    }
}

impl Default for HugePagesOff {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for HugePagesOff {
    fn drop(&mut self) {
        let mut guards = GUARDS.lock().unwrap_or_else(PoisonError::into_inner);
        guards.alive -= 1;
        if guards.alive == 0 && !guards.off_before {
            set_disabled(false);
        }
    }
}

/// Whether transparent huge pages are off for this process (always `false` off Linux, or when the
/// kernel does not say).
pub fn disabled() -> bool {
    #[cfg(target_os = "linux")]
    {
        nix::sys::prctl::get_thp_disable().unwrap_or(false)
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// Sets the process's flag; a kernel that refuses (a sandbox's filter) only costs speed.
fn set_disabled(off: bool) {
    #[cfg(target_os = "linux")]
    if let Err(error) = nix::sys::prctl::set_thp_disable(off) {
        tracing::debug!(%error, off, "could not set the transparent huge pages flag");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = off;
}
