//! File and stdin sources for `aer replay`: read JSON lines (or API pages, one per line) from each
//! input in turn, decode them with the codec, and report progress on stderr for long inputs.

use super::codec::{decode_line, LineRef, Reject, RejectReason};
use crate::model::Event;
use std::io::Read;
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

/// Everything decoded from a set of inputs, in input order. The events stay in the blocks they
/// were decoded in (a few thousand each), so that sorting can free them block by block.
#[derive(Debug, Default)]
pub struct Decoded {
    pub blocks: Vec<Vec<Event>>,
    pub rejects: Vec<Reject>,
    /// Non-blank lines read.
    pub lines: u64,
}

impl Decoded {
    /// The accepted events, in input order.
    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.blocks.iter().flatten()
    }

    pub fn events_mut(&mut self) -> impl Iterator<Item = &mut Event> {
        self.blocks.iter_mut().flatten()
    }

    pub fn event_count(&self) -> usize {
        self.blocks.iter().map(Vec::len).sum()
    }
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

/// Reads `reader` in blocks of whole lines and decodes them on parallel threads (one per core),
/// appending the results in input order: the output is the same as decoding line by line.
fn read_one(
    reader: impl Read,
    name: &str,
    bar: &indicatif::ProgressBar,
    out: &mut Decoded,
) -> Result<(), SourceError> {
    read_blocks(reader, name, bar, out, BLOCK)
}

/// A block of whole lines as a decoder returns it: what it decoded (reject line numbers counted
/// from 1 within the block) and how many lines, blank ones included, the block held.
struct DecodedBlock {
    events: Vec<Event>,
    rejects: Vec<Reject>,
    lines: u64,
    physical_lines: u64,
}

/// The reading pipeline: this thread reads blocks of whole lines and puts them on one queue that
/// long-lived decoder threads (one per core, each keeping its interning cache for the whole
/// input) take from as each becomes free, while it collects the results in input order. At
/// most two blocks per decoder are in flight.
///
/// A shared queue, not a fixed turn per decoder: on this project's 2-core VM the two cores'
/// speeds differ from moment to moment (`aer bench --operator-times`: each worker gets the same
/// records in every run, yet either may be the slower, by up to a third), and with fixed turns
/// the faster decoder waited for the slower one's blocks.
///
/// Decoders hand each block's buffer back once decoded, and this thread refills it: a fresh
/// multi-megabyte buffer per block would be new memory from the OS each time, which the kernel
/// zeroes page by page as it is first written (about 4% of a replay's CPU with mimalloc v3,
/// measured before buffers were reused).
///
/// This thread does not count the lines it reads: the decoders split the lines anyway, and the
/// count here (a pass over every byte, on a third thread sharing the two cores with the
/// decoders) was 1.4–1.7% of a replay's CPU samples. A read error's line number is found when
/// it happens: the lines of the blocks already sent (collected first) plus those of the block
/// being filled.
fn read_blocks(
    reader: impl Read,
    name: &str,
    bar: &indicatif::ProgressBar,
    out: &mut Decoded,
    block_size: usize,
) -> Result<(), SourceError> {
    use std::sync::mpsc::{channel, sync_channel};
    use std::sync::{Arc, Mutex};
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut reader = reader;
    std::thread::scope(|scope| {
        // Blocks to decode, numbered in input order; whichever decoder is free takes the next.
        let (to_decoders, work) = sync_channel::<(usize, Vec<u8>)>(threads);
        let work = Arc::new(Mutex::new(work));
        // Decoded blocks with their numbers, in the order they finish; `None` if a decoder
        // panicked (so that the collector stops instead of waiting for that block forever).
        let (done_tx, from_decoders) = channel::<(usize, Option<DecodedBlock>)>();
        // Emptied buffers, back from the decoders (never more than the blocks in flight).
        let (recycle_tx, recycle_rx) = channel::<Vec<u8>>();
        for _ in 0..threads {
            let (work, done_tx, recycle_tx) = (work.clone(), done_tx.clone(), recycle_tx.clone());
            scope.spawn(move || {
                // The mean bytes per line of this thread's last block, to make room for the
                // next block's events. The first guess is below the shortest Slack entry in
                // `../shared/data/third_party` (406 bytes), so the first block has room to spare.
                let mut bytes_per_line = 256;
                loop {
                    // The lock is held only while waiting for the next block.
                    let next = work
                        .lock()
                        .map_err(|_| ())
                        .and_then(|w| w.recv().map_err(|_| ()));
                    let Ok((number, block)) = next else {
                        break;
                    };
                    let room = room_for(block.len(), bytes_per_line);
                    let decoded =
                        std::panic::catch_unwind(|| decode_block(&block, room, name)).ok();
                    if let Some(d) = &decoded {
                        if d.physical_lines > 0 {
                            bytes_per_line = block.len() / d.physical_lines as usize;
                        }
                    }
                    let failed = decoded.is_none();
                    // The reader may have finished and gone: then the buffer is simply freed.
                    let _ = recycle_tx.send(block);
                    if done_tx.send((number, decoded)).is_err() || failed {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        // Blocks decoded ahead of the next one in order.
        let mut ahead: std::collections::BTreeMap<usize, DecodedBlock> = Default::default();
        let (mut sent, mut collected) = (0usize, 0usize);
        // Lines before the next block collected.
        let mut collected_lines = 0u64;
        let mut collect = |collected: &mut usize, collected_lines: &mut u64, out: &mut Decoded| {
            let block = loop {
                if let Some(block) = ahead.remove(collected) {
                    break block;
                }
                let (number, block) = from_decoders.recv().expect("decoder threads are running");
                ahead.insert(number, block.expect("a decoder thread panicked"));
            };
            *collected += 1;
            let DecodedBlock {
                events,
                mut rejects,
                lines,
                physical_lines,
            } = block;
            for reject in &mut rejects {
                reject.line += *collected_lines;
            }
            *collected_lines += physical_lines;
            if !events.is_empty() {
                out.blocks.push(events);
            }
            out.rejects.append(&mut rejects);
            out.lines += lines;
        };
        let mut carry: Vec<u8> = Vec::new();
        let mut eof = false;
        while !eof {
            let mut block = recycle_rx.try_recv().unwrap_or_default();
            block.clear();
            block.reserve(block_size.max(carry.len()) + 1);
            block.append(&mut carry);
            // Fill to the block size, then on until the block ends with a whole line.
            loop {
                let want = block_size
                    .saturating_sub(block.len())
                    .max(block_size.min(1 << 16));
                let n = match (&mut reader).take(want as u64).read_to_end(&mut block) {
                    Ok(n) => n,
                    Err(source) => {
                        // Every block sent ends with a whole line: once all are decoded, their
                        // lines and this block's whole lines come before the one that failed.
                        while collected < sent {
                            collect(&mut collected, &mut collected_lines, out);
                        }
                        let here = memchr::memchr_iter(b'\n', &block).count() as u64;
                        return Err(SourceError::Read {
                            path: name.to_string(),
                            line: collected_lines + here + 1,
                            source,
                        });
                    }
                };
                if n == 0 {
                    eof = true;
                    break;
                }
                if block.len() < block_size {
                    continue;
                }
                if let Some(end) = memchr::memrchr(b'\n', &block) {
                    carry = block.split_off(end + 1);
                    break;
                }
            }
            bar.inc(block.len() as u64);
            if block.is_empty() {
                break;
            }
            to_decoders
                .send((sent, block))
                .expect("a decoder thread panicked");
            sent += 1;
            if sent - collected >= 2 * threads {
                collect(&mut collected, &mut collected_lines, out);
            }
        }
        drop(to_decoders);
        while collected < sent {
            collect(&mut collected, &mut collected_lines, out);
        }
        Ok(())
    })
}

/// The shortest line that can hold a valid entry is longer than this, so a block of blank or
/// tiny lines cannot make [`decode_block`] reserve more than the block's own size over again.
const MIN_ENTRY_BYTES: usize = 64;

/// Room for the events of a block of `len` bytes whose lines are likely `bytes_per_line` long
/// on average (as the decoder's last block's were): that many lines and a sixteenth more, never
/// more than one per [`MIN_ENTRY_BYTES`]. A block with more events grows its list as usual.
fn room_for(len: usize, bytes_per_line: usize) -> usize {
    let lines = len / bytes_per_line.max(1);
    (lines + lines / 16 + 16).min(len / MIN_ENTRY_BYTES + 1)
}

/// Decodes a block of whole lines, with room made for `room` events; reject line numbers count
/// from 1 within the block.
fn decode_block(block: &[u8], room: usize, name: &str) -> DecodedBlock {
    let mut out = DecodedBlock {
        events: Vec::with_capacity(room),
        rejects: Vec::new(),
        lines: 0,
        physical_lines: 0,
    };
    for (i, buf) in lines_of(block).enumerate() {
        out.physical_lines += 1;
        let line = 1 + i as u64;
        let at = LineRef { source: name, line };
        // simdutf8 checks a line in fewer instructions than std (std's `from_utf8` was 2% of a
        // replay's); a line it declines goes to std, whose error says where, for the reject.
        let text = simdutf8::basic::from_utf8(buf).or_else(|_| std::str::from_utf8(buf));
        match text {
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

/// The lines of `block`, each with its newline (the last one may have none), as
/// `block.split_inclusive(|b| *b == b'\n')` gives them, found with `memchr`: the byte-by-byte
/// split was 7% of a replay's samples, more than any other part of decoding but JSON parsing.
fn lines_of(block: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut ends = memchr::memchr_iter(b'\n', block);
    let mut start = 0;
    std::iter::from_fn(move || {
        let end = match ends.next() {
            Some(newline) => newline + 1,
            None if start < block.len() => block.len(),
            None => return None,
        };
        let line = &block[start..end];
        start = end;
        Some(line)
    })
}

/// Convenience for tests and tools: decodes one file.
pub fn read_file(path: &Path) -> Result<Decoded, SourceError> {
    read_inputs(&[path.to_path_buf()], false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::Just;

    proptest::proptest! {
        /// The memchr line split is the byte-by-byte one: blocks with and without a final
        /// newline, empty lines, carriage returns, no newline at all, and lines long enough
        /// (up to 300 bytes) for memchr's vector loops.
        #[test]
        fn lines_of_is_split_inclusive(segments in proptest::collection::vec(
            (
                proptest::collection::vec(
                    proptest::prop_oneof![8 => Just(b'a'), 1 => Just(b'\r'), 1 => Just(0xffu8)],
                    0..300,
                ),
                proptest::bool::ANY,
            ),
            0..8,
        )) {
            let mut block = Vec::new();
            for (text, newline) in segments {
                block.extend(text);
                if newline {
                    block.push(b'\n');
                }
            }
            let ours: Vec<&[u8]> = lines_of(&block).collect();
            let theirs: Vec<&[u8]> = block.split_inclusive(|b| *b == b'\n').collect();
            proptest::prop_assert_eq!(ours, theirs);
        }
    }

    /// The UTF-8 check (simdutf8, std for what it declines): text outside ASCII passes, and a
    /// line that is not UTF-8 is rejected with std's message, which says where.
    #[test]
    fn lines_not_utf8_are_rejected_with_where() {
        let good = "{\"id\":\"e1\",\"date_create\":1000,\"action\":\"user_login\",\"actor\":{\"user\":{\"id\":\"Ü\"}},\"context\":{\"location\":{\"id\":\"E€\"}}}\n";
        let mut block = good.as_bytes().to_vec();
        block.extend_from_slice(b"{\"id\":\"\xc3\x28\"}\n{\"id\":\"\xe2\x82");
        let out = decode_block(&block, 2, "t");
        assert_eq!(out.events.len(), 1);
        assert_eq!(&*out.events[0].user, "Ü");
        assert_eq!(&*out.events[0].enterprise, "E€");
        let rejects: Vec<(u64, RejectReason, &str)> = out
            .rejects
            .iter()
            .map(|r| (r.line, r.reason, r.detail.as_str()))
            .collect();
        assert_eq!(
            rejects,
            [
                (
                    2,
                    RejectReason::InvalidJson,
                    "not UTF-8: invalid utf-8 sequence of 1 bytes from index 7"
                ),
                (
                    3,
                    RejectReason::InvalidJson,
                    "not UTF-8: incomplete utf-8 byte sequence from index 7"
                ),
            ]
        );
        assert_eq!((out.lines, out.physical_lines), (3, 3));
    }

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
        let mut expected = DecodedBlock {
            events: Vec::new(),
            rejects: Vec::new(),
            lines: 0,
            physical_lines: 0,
        };
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
            let events: Vec<Event> = got.events().cloned().collect();
            assert_eq!(events, expected.events, "block size {block_size}");
            let lines: Vec<u64> = got.rejects.iter().map(|r| r.line).collect();
            let mut want: Vec<u64> = expected.rejects.iter().map(|r| r.line).collect();
            want.insert(want.len() - 1, 501);
            assert_eq!(lines, want, "block size {block_size}");
            assert_eq!(got.lines, expected.lines + 1, "block size {block_size}");
        }
        assert!(expected.events.len() > 400);
    }

    /// Gives `data` a few bytes at a time, then fails.
    struct FailsAtEnd {
        data: Vec<u8>,
        at: usize,
    }

    impl Read for FailsAtEnd {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.at == self.data.len() {
                return Err(std::io::Error::other("device gone"));
            }
            let n = buf.len().min(97).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    /// A read error names the line it happened in: the line after the last whole line read,
    /// whether the lines before it were sent to the decoders in earlier blocks or not yet.
    #[test]
    fn a_read_error_names_the_line_it_happened_in() {
        let line = "{\"id\":\"e\",\"date_create\":1000,\"action\":\"a\"}\n";
        let bar = indicatif::ProgressBar::hidden();
        for (whole, partial) in [(0, ""), (3, ""), (40, "{\"id\":"), (41, "\n")] {
            let mut data = line.repeat(whole).into_bytes();
            data.extend_from_slice(partial.as_bytes());
            // Blank lines are lines too.
            let newlines = data.iter().filter(|b| **b == b'\n').count() as u64;
            for block_size in [1, 100, 1 << 20] {
                let reader = FailsAtEnd {
                    data: data.clone(),
                    at: 0,
                };
                let err = read_blocks(reader, "in", &bar, &mut Decoded::default(), block_size)
                    .expect_err("the reader fails");
                match err {
                    SourceError::Read { path, line, source } => {
                        assert_eq!(path, "in");
                        assert_eq!(line, newlines + 1, "{whole} lines, block size {block_size}");
                        assert_eq!(source.to_string(), "device gone");
                    }
                    other => panic!("unexpected error {other}"),
                }
            }
        }
    }

    /// Room for a block's events: its length over the last block's bytes per line, and a
    /// sixteenth more, never more than one event per `MIN_ENTRY_BYTES` (nor for a zero guess).
    #[test]
    fn room_follows_the_last_blocks_line_length_within_bounds() {
        // 4 MiB of 512-byte lines: 8,192 lines, and a sixteenth more.
        assert_eq!(room_for(4 << 20, 512), 8_192 + 512 + 16);
        // Never more than one event per MIN_ENTRY_BYTES, however short the lines were.
        assert_eq!(room_for(4 << 20, 1), (4 << 20) / MIN_ENTRY_BYTES + 1);
        assert_eq!(room_for(4 << 20, 0), (4 << 20) / MIN_ENTRY_BYTES + 1);
        assert_eq!(room_for(0, 512), 1);
    }
}
