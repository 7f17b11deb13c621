//! File and stdin sources for `aer replay`: read JSON lines (or API pages, one per line) from each
//! input in turn, decode them with the codec, and report progress on stderr for long inputs.

use super::codec::{decode_line, LineRef, Reject, RejectReason};
use crate::model::Event;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// Errors opening or reading an input.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("error reading {path} at line {line}: {source}")]
    Read {
        path: String,
        line: u64,
        source: std::io::Error,
    },
}

/// Everything decoded from a set of inputs, in input order.
#[derive(Debug, Default)]
pub struct Decoded {
    pub events: Vec<Event>,
    pub rejects: Vec<Reject>,
    /// Non-blank lines read.
    pub lines: u64,
}

/// Reads every input (`-` is stdin) in order. `progress` shows a bar on stderr when it is a
/// terminal.
pub fn read_inputs(inputs: &[PathBuf], progress: bool) -> Result<Decoded, SourceError> {
    let mut out = Decoded::default();
    let total: u64 = inputs
        .iter()
        .filter(|p| p.as_os_str() != "-")
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let bar = super::progress_bar(
        total,
        "{spinner} reading {msg} {bytes}/{total_bytes} [{bar:30}] {bytes_per_sec} eta {eta}",
        progress,
    );
    for path in inputs {
        let name = path.display().to_string();
        bar.set_message(name.clone());
        if path.as_os_str() == "-" {
            read_one(std::io::stdin().lock(), "-", &bar, &mut out)?;
        } else {
            let file = std::fs::File::open(path).map_err(|source| SourceError::Open {
                path: name.clone(),
                source,
            })?;
            read_one(file, &name, &bar, &mut out)?;
        }
    }
    bar.finish_and_clear();
    Ok(out)
}

fn read_one(
    reader: impl Read,
    name: &str,
    bar: &indicatif::ProgressBar,
    out: &mut Decoded,
) -> Result<(), SourceError> {
    let mut reader = BufReader::with_capacity(1 << 20, reader);
    let mut buf = Vec::with_capacity(4096);
    let mut line = 0u64;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|source| SourceError::Read {
                path: name.to_string(),
                line: line + 1,
                source,
            })?;
        if n == 0 {
            return Ok(());
        }
        line += 1;
        bar.inc(n as u64);
        let at = LineRef { source: name, line };
        match std::str::from_utf8(&buf) {
            Ok(text) => {
                if !text.trim().is_empty() {
                    out.lines += 1;
                }
                decode_line(text, at, &mut out.events, &mut out.rejects);
            }
            Err(e) => {
                out.lines += 1;
                out.rejects.push(Reject {
                    source: name.to_string(),
                    line,
                    entry: None,
                    reason: RejectReason::InvalidJson,
                    detail: format!("not UTF-8: {e}"),
                    excerpt: String::from_utf8_lossy(&buf[..buf.len().min(200)]).into_owned(),
                });
            }
        }
    }
}

/// Convenience for tests and tools: decodes one file.
pub fn read_file(path: &Path) -> Result<Decoded, SourceError> {
    read_inputs(&[path.to_path_buf()], false)
}
