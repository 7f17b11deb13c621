//! Transparent huge pages while a replay reads: the guard turns them off for the process and
//! gives back the setting it found, nested, across threads, and around a whole replay (failed or
//! not). One test, in a binary of its own: the setting is the process's, so tests running in
//! parallel beside it would see each other's guards.

use aer::config::Config;
use aer::io::huge_pages::{disabled, HugePagesOff};
use aer::replay::{run_pipeline, ReplayOptions};
use std::path::PathBuf;

fn replay_of(input: PathBuf, out: PathBuf) -> ReplayOptions {
    ReplayOptions {
        inputs: vec![input],
        config: Config::default(),
        workers: 2,
        cluster: None,
        out,
        progress: false,
        db: None,
        operator_times: false,
    }
}

/// The write end of the replay's input pipe, once the replay has opened the read end. Fails, where
/// a plain `open` would wait for a reader for ever, if the replay ends first (an error before it
/// opened its input) or has not opened it within a minute.
#[cfg(target_os = "linux")]
fn open_writer<T>(pipe: &std::path::Path, replay: &std::thread::JoinHandle<T>) -> std::fs::File {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use std::os::unix::fs::OpenOptionsExt;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(OFlag::O_NONBLOCK.bits())
            .open(pipe);
        match opened {
            Ok(file) => {
                // Blocking again, so that writing waits for the reader instead of failing.
                fcntl(&file, FcntlArg::F_SETFL(OFlag::empty())).expect("fcntl");
                return file;
            }
            // No reader yet.
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENXIO as i32) => {
                assert!(
                    !replay.is_finished(),
                    "the replay ended before reading its input"
                );
                assert!(
                    std::time::Instant::now() < deadline,
                    "the replay did not open its input within a minute"
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => panic!("opening the pipe: {e}"),
        }
    }
}

#[cfg(target_os = "linux")]
#[test]
fn huge_pages_are_off_while_guarded_and_as_found_after() {
    let set = |off: bool| nix::sys::prctl::set_thp_disable(off).expect("prctl");
    // The flag is inherited across exec: start from a known state whatever the runner's.
    set(false);
    assert!(!disabled());

    // Nested guards: off until the outer one goes.
    let outer = HugePagesOff::new();
    assert!(disabled());
    let inner = HugePagesOff::new();
    drop(inner);
    assert!(disabled(), "the outer guard still holds");
    drop(outer);
    assert!(!disabled(), "the setting found is back");

    // Guards on other threads overlap: the last one dropped restores.
    let first = HugePagesOff::new();
    let second = std::thread::spawn(HugePagesOff::new).join().unwrap();
    std::thread::spawn(move || drop(first)).join().unwrap();
    assert!(disabled(), "the second guard still holds");
    drop(second);
    assert!(!disabled());

    // A process that already ran with them off keeps them off.
    set(true);
    drop(HugePagesOff::new());
    assert!(disabled());
    set(false);

    // A replay reads under a guard. Its input is a named pipe, so the test sees the flag while
    // the replay is still reading (it waits for the end of the input), then after it.
    let dir = tempfile::tempdir().unwrap();
    let pipe = dir.path().join("input.jsonl");
    nix::unistd::mkfifo(&pipe, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let replay = std::thread::spawn({
        let options = replay_of(pipe.clone(), dir.path().join("a"));
        move || run_pipeline(&options)
    });
    let samples = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/third_party/panther_slack_audit_samples.jsonl");
    let mut writer = open_writer(&pipe, &replay);
    std::io::Write::write_all(&mut writer, &std::fs::read(samples).unwrap()).unwrap();
    assert!(disabled(), "off while the replay reads");
    drop(writer);
    let report = replay.join().unwrap().unwrap();
    assert_eq!(report.summary.lines, 66);
    assert!(!disabled(), "the setting found is back after the replay");

    // Also when the replay fails, and when the process had them off already.
    let missing = || replay_of(dir.path().join("missing.jsonl"), dir.path().join("b"));
    assert!(run_pipeline(&missing()).is_err());
    assert!(!disabled());
    set(true);
    assert!(run_pipeline(&missing()).is_err());
    assert!(
        disabled(),
        "a replay leaves huge pages off when it found them off"
    );
    set(false);
}

#[cfg(not(target_os = "linux"))]
#[test]
fn huge_pages_are_left_alone_off_linux() {
    drop(HugePagesOff::new());
    assert!(!disabled());
}
