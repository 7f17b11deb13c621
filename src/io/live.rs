//! Live line sources for `aer run`: standard input and followed files. Each runs on a thread of
//! its own, decodes lines with the codec (rejects are counted and logged, never dropped
//! silently), and sends batches of events into the service's bounded ingest queue, so a slow
//! dataflow slows the readers down instead of growing memory.
//!
//! A followed file is read from its start (the dataflow's state is rebuilt from durable input on
//! every start; the response stage's store makes that safe), then polled for appended lines.
//! When the file shrinks or is replaced (rotation), reading starts again from the top of the new
//! file.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::api::metrics::{Metrics, ReasonLabel, SourceLabel};
use crate::api::Ingest;
use crate::io::codec::{decode_line, LineRef, Reject};
use crate::model::Event;

/// Lines decoded per batch sent to the queue.
const BATCH_LINES: usize = 4_096;

/// Decodes a batch of lines from a live source. Rejects are counted in
/// `aer_rejected_events_total{reason}` and logged (one warning per batch, each reject at debug);
/// the caller gets them too, to answer with or keep.
pub fn decode_batch<S: AsRef<str>>(
    source: &str,
    first_line: u64,
    lines: &[S],
    metrics: &Metrics,
) -> (Vec<Event>, Vec<Reject>) {
    let (mut events, mut rejects) = (Vec::new(), Vec::new());
    for (i, line) in lines.iter().enumerate() {
        decode_line(
            line.as_ref(),
            LineRef {
                source,
                line: first_line + i as u64,
            },
            &mut events,
            &mut rejects,
        );
    }
    for r in &rejects {
        metrics
            .rejected
            .get_or_create(&ReasonLabel {
                reason: r.reason.as_str().into(),
            })
            .inc();
        tracing::debug!(source, line = r.line, reason = r.reason.as_str(), detail = %r.detail, "rejected line");
    }
    if let Some(first) = rejects.first() {
        tracing::warn!(
            source,
            rejected = rejects.len(),
            first_line = first.line,
            first_reason = first.reason.as_str(),
            first_detail = %first.detail,
            "rejected input lines"
        );
    }
    (events, rejects)
}

/// Decodes `lines` and queues the events; false when the queue is closed.
fn forward(
    source: &str,
    first_line: u64,
    lines: &[String],
    queue: &mpsc::Sender<Ingest>,
    metrics: &Metrics,
) -> bool {
    let (events, _) = decode_batch(source, first_line, lines, metrics);
    if events.is_empty() {
        return true;
    }
    metrics
        .events
        .get_or_create(&SourceLabel {
            source: source.into(),
        })
        .inc_by(events.len() as u64);
    queue
        .blocking_send(Ingest::Events {
            source: source.into(),
            events,
        })
        .is_ok()
}

/// Reads standard input to its end.
pub fn stdin(queue: mpsc::Sender<Ingest>, metrics: Arc<Metrics>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut lock = stdin.lock();
        let mut batch = Vec::with_capacity(BATCH_LINES);
        let mut first = 1u64;
        let mut line = String::new();
        loop {
            line.clear();
            match lock.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) => batch.push(line.trim_end_matches(['\n', '\r']).to_string()),
                Err(e) => {
                    tracing::error!(error = %e, "stdin: read failed; the source stops");
                    break;
                }
            }
            if batch.len() == BATCH_LINES {
                if !forward("-", first, &batch, &queue, &metrics) {
                    return;
                }
                first += batch.len() as u64;
                batch.clear();
            }
        }
        forward("-", first, &batch, &queue, &metrics);
        tracing::info!("stdin: end of input");
    })
}

/// An open followed file: its reader and the inode it was opened at.
struct Opened {
    reader: BufReader<File>,
    inode: u64,
}

/// Follows a file until `stop` is set, polling every `poll`.
pub fn follow(
    path: PathBuf,
    poll: Duration,
    queue: mpsc::Sender<Ingest>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let source = path.display().to_string();
        let mut opened: Option<Opened> = None;
        let mut line_no = 1u64;
        let mut partial = String::new();
        while !stop.load(Ordering::Relaxed) {
            let file = match &mut opened {
                Some(file) => file,
                None => match open(&path) {
                    Ok(file) => {
                        tracing::info!(path = %source, "following file from its start");
                        line_no = 1;
                        partial.clear();
                        opened.insert(file)
                    }
                    Err(e) => {
                        tracing::warn!(path = %source, error = %e, "cannot open file; retrying");
                        std::thread::sleep(poll.max(Duration::from_secs(1)));
                        continue;
                    }
                },
            };
            let batch = match read_batch(&mut file.reader, &mut partial) {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::error!(path = %source, error = %e, "read failed; reopening");
                    opened = None;
                    continue;
                }
            };
            if !batch.is_empty() {
                if !forward(&source, line_no, &batch, &queue, &metrics) {
                    return;
                }
                line_no += batch.len() as u64;
                if batch.len() == BATCH_LINES {
                    continue;
                }
            }
            if replaced(&path, file) {
                tracing::info!(path = %source, "file truncated or replaced; reading the new one");
                opened = None;
                continue;
            }
            std::thread::sleep(poll);
        }
    })
}

/// Complete lines available now (at most a batch); an unfinished last line stays in `partial`.
fn read_batch(reader: &mut BufReader<File>, partial: &mut String) -> std::io::Result<Vec<String>> {
    let mut batch = Vec::new();
    while batch.len() < BATCH_LINES {
        let mut buf = String::new();
        if reader.read_line(&mut buf)? == 0 {
            break;
        }
        partial.push_str(&buf);
        if partial.ends_with('\n') {
            batch.push(std::mem::take(partial).trim_end().to_string());
        }
    }
    Ok(batch)
}

fn open(path: &Path) -> std::io::Result<Opened> {
    let file = File::open(path)?;
    let inode = inode(&file.metadata()?);
    Ok(Opened {
        reader: BufReader::new(file),
        inode,
    })
}

#[cfg(unix)]
fn inode(meta: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(meta)
}

#[cfg(not(unix))]
fn inode(_meta: &std::fs::Metadata) -> u64 {
    0
}

/// Whether the file at `path` is no longer the one being read, or shrank below the read
/// position.
fn replaced(path: &Path, file: &mut Opened) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if inode(&meta) != file.inode {
        return true;
    }
    file.reader
        .stream_position()
        .map_or(true, |pos| meta.len() < pos)
}
