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

/// Bytes of whole lines handed to one decoder thread at a time.
const BLOCK: usize = 4 << 20;

/// Reads `reader` in blocks of whole lines and decodes the blocks of each round on parallel
/// threads (one per core), appending the results in input order: the output is the same as
/// decoding line by line.
fn read_one(
    reader: impl Read,
    name: &str,
    bar: &indicatif::ProgressBar,
    out: &mut Decoded,
) -> Result<(), SourceError> {
    read_blocks(reader, name, bar, out, BLOCK)
}

fn read_blocks(
    reader: impl Read,
    name: &str,
    bar: &indicatif::ProgressBar,
    out: &mut Decoded,
    block_size: usize,
) -> Result<(), SourceError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut reader = BufReader::with_capacity(1 << 20, reader);
    let mut line = 0u64;
    let mut eof = false;
    while !eof {
        let mut blocks: Vec<(u64, Vec<u8>)> = Vec::with_capacity(threads);
        while blocks.len() < threads && !eof {
            let first = line + 1;
            let mut block = Vec::with_capacity(block_size + 4096);
            while block.len() < block_size {
                let n =
                    reader
                        .read_until(b'\n', &mut block)
                        .map_err(|source| SourceError::Read {
                            path: name.to_string(),
                            line: line + 1,
                            source,
                        })?;
                if n == 0 {
                    eof = true;
                    break;
                }
                line += 1;
            }
            bar.inc(block.len() as u64);
            if !block.is_empty() {
                blocks.push((first, block));
            }
        }
        let decoded: Vec<Decoded> = std::thread::scope(|scope| {
            let workers: Vec<_> = blocks
                .iter()
                .map(|(first, block)| scope.spawn(move || decode_block(block, name, *first)))
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("a decoder thread panicked"))
                .collect()
        });
        for block in decoded {
            out.events.extend(block.events);
            out.rejects.extend(block.rejects);
            out.lines += block.lines;
        }
    }
    Ok(())
}

/// Decodes a block of whole lines, the first of which is line `first` of `name`.
fn decode_block(block: &[u8], name: &str, first: u64) -> Decoded {
    let mut out = Decoded::default();
    for (i, buf) in block.split_inclusive(|b| *b == b'\n').enumerate() {
        let line = first + i as u64;
        let at = LineRef { source: name, line };
        match std::str::from_utf8(buf) {
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
    out
}

/// Convenience for tests and tools: decodes one file.
pub fn read_file(path: &Path) -> Result<Decoded, SourceError> {
    read_inputs(&[path.to_path_buf()], false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decoding in parallel blocks gives exactly what decoding line by line gives: the same
    /// events in the same order, and rejects with the right line numbers.
    #[test]
    fn block_decoding_equals_line_by_line() {
        let mut input = Vec::new();
        for i in 0..500u64 {
            let line = match i % 37 {
                5 => "not json\n".to_string(),
                11 => "\n".to_string(),
                _ => format!(
                    "{{\"id\":\"e{i}\",\"date_create\":{},\"action\":\"user_login\",\"actor\":{{\"user\":{{\"id\":\"U{}\"}}}},\"context\":{{\"location\":{{\"id\":\"E\"}}}}}}\n",
                    1000 + i,
                    i % 7
                ),
            };
            input.extend_from_slice(line.as_bytes());
        }
        input.extend_from_slice(b"\xff\xfe not utf-8\n{\"id\":\"last\"}");
        let mut expected = Decoded::default();
        for (i, text) in String::from_utf8_lossy(&input)
            .split_inclusive('\n')
            .enumerate()
        {
            if text.contains('\u{fffd}') {
                continue;
            }
            if !text.trim().is_empty() {
                expected.lines += 1;
            }
            let at = LineRef {
                source: "t",
                line: i as u64 + 1,
            };
            decode_line(text, at, &mut expected.events, &mut expected.rejects);
        }
        let bar = indicatif::ProgressBar::hidden();
        for block_size in [1, 300, 4096, 1 << 20] {
            let mut got = Decoded::default();
            read_blocks(&input[..], "t", &bar, &mut got, block_size).expect("read");
            assert_eq!(got.events, expected.events, "block size {block_size}");
            let lines: Vec<u64> = got.rejects.iter().map(|r| r.line).collect();
            let mut want: Vec<u64> = expected.rejects.iter().map(|r| r.line).collect();
            want.insert(want.len() - 1, 501);
            assert_eq!(lines, want, "block size {block_size}");
            assert_eq!(got.lines, expected.lines + 1, "block size {block_size}");
        }
        assert!(expected.events.len() > 400);
    }
}
