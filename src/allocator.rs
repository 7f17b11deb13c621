//! The allocator's settings. The binary's global allocator is mimalloc (v2; see `src/main.rs`),
//! and [`configure`], called first thing in `main`, sets how long mimalloc keeps memory it has
//! freed before handing it back to the system (its purge delay). mimalloc v2 waits 10 ms; a
//! replay frees its decoded input while the engine allocates its state, and with a one-second
//! delay a replay took about 3,000 fewer page faults and 2–6% less time, most of it in the
//! engine (README, "The allocator round"). The delay is set only when the environment does not set
//! it: `MIMALLOC_PURGE_DELAY` keeps the last word (left to itself, `mi_option_set` would
//! override it).

use libmimalloc_sys as mi;

/// mimalloc v2's `mi_option_purge_delay`: its place in the C library's `mi_option_t`, which the
/// Rust bindings name the options around but not this one. The test
/// `purge_delay_is_mimallocs_option` holds it to the C library's own reading of
/// `MIMALLOC_PURGE_DELAY`.
const PURGE_DELAY: mi::mi_option_t = 15;

/// The purge delay [`configure`] sets, in milliseconds: one second (mimalloc v3's default).
/// Memory a long-running `aer run` frees still goes back to the system a second later (ten for
/// whole arenas: mimalloc multiplies the delay for them).
pub const PURGE_DELAY_MS: i64 = 1_000;

/// The variables mimalloc reads the purge delay from (the second is its older name). It matches
/// them without regard to case.
const PURGE_DELAY_VARS: [&str; 2] = ["MIMALLOC_PURGE_DELAY", "MIMALLOC_RESET_DELAY"];

/// Sets mimalloc's purge delay to [`PURGE_DELAY_MS`] unless the environment sets it; returns
/// whether it did. Call it before any thread is started (mimalloc's options are not meant to
/// be changed while other threads allocate).
pub fn configure() -> bool {
    let from_env = std::env::vars_os().any(|(name, _)| {
        name.to_str().is_some_and(|name| {
            PURGE_DELAY_VARS
                .iter()
                .any(|v| name.eq_ignore_ascii_case(v))
        })
    });
    if from_env {
        return false;
    }
    // SAFETY: a plain setter of one entry of mimalloc's option table, with an index inside the
    // table (the test below holds it to the right option); `main` calls this before starting
    // any thread, so nothing reads the entry meanwhile.
    unsafe { mi::mi_option_set(PURGE_DELAY, PURGE_DELAY_MS as _) };
    true
}

/// mimalloc's purge delay now, in milliseconds (-1: never purge).
// `c_long` is `i64` here, but 32 bits on some platforms.
#[allow(clippy::useless_conversion)]
pub fn purge_delay_ms() -> i64 {
    // SAFETY: a plain getter of one entry of mimalloc's option table (reading the environment
    // on first use), with an index inside the table.
    i64::from(unsafe { mi::mi_option_get(PURGE_DELAY) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const CHILD: &str = "AER_ALLOCATOR_TEST_CHILD";
    const NAME: &str = "allocator::tests::purge_delay_is_mimallocs_option";

    /// Runs this test alone in a child process of the test binary, with `env` set (and the
    /// purge delay variables removed otherwise), and asserts it passed there. mimalloc reads
    /// its options once per process, so each case needs a process of its own; and in a child
    /// no other test thread touches the options meanwhile.
    fn in_child(case: &str, env: &[(&str, &str)]) {
        let mut child = Command::new(std::env::current_exe().expect("the test binary"));
        child.args([NAME, "--exact", "--test-threads=1", "--nocapture"]);
        for var in PURGE_DELAY_VARS {
            child.env_remove(var);
        }
        child.env(CHILD, case).envs(env.iter().copied());
        let out = child.output().expect("the test binary runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "case {case}: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `PURGE_DELAY` is the option mimalloc reads from `MIMALLOC_PURGE_DELAY` (a wrong index
    /// reads another option's value), `configure` leaves a delay set that way alone, and
    /// otherwise replaces mimalloc v2's 10 ms with [`PURGE_DELAY_MS`].
    #[test]
    fn purge_delay_is_mimallocs_option() {
        match std::env::var(CHILD).as_deref() {
            Ok("from-env") => {
                assert_eq!(purge_delay_ms(), 4321);
                assert!(!configure(), "the environment's delay is kept");
                assert_eq!(purge_delay_ms(), 4321);
            }
            Ok("lower-case") => {
                assert!(!configure(), "mimalloc reads its variables in any case");
                assert_eq!(purge_delay_ms(), 77);
            }
            Ok("default") => {
                assert_eq!(purge_delay_ms(), 10, "mimalloc v2's default");
                assert!(configure());
                assert_eq!(purge_delay_ms(), PURGE_DELAY_MS);
            }
            Ok(other) => panic!("unknown case {other}"),
            Err(_) => {
                in_child("from-env", &[("MIMALLOC_PURGE_DELAY", "4321")]);
                in_child("lower-case", &[("mimalloc_purge_delay", "77")]);
                in_child("default", &[]);
            }
        }
    }
}
