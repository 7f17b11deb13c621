//! The sequencer: between a source and the dataflow it drops re-sent entries (same `id`), assigns
//! each event the time it is processed at, and releases events in (time, id) order behind the
//! watermark (DESIGN 3). Both engines, the dataflow and the batch reference, consume its output,
//! so a file and a stream of the same events give the same result.

use crate::model::{Event, EventChunks, EventId, Sequenced, Time};
use foldhash::{HashSet, HashSetExt};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

/// Counters the sequencer keeps; they end up in `summary.json` and the metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SequencerStats {
    /// Events released to the engines.
    pub released: u64,
    /// Entries whose id was already seen (the API re-sends on retries); counted once.
    pub duplicates: u64,
    /// Events older than the watermark, processed at the watermark time.
    pub late: u64,
}

/// Orders events within a lateness bound. With `lateness = None` it holds everything until
/// [`Sequencer::finish`], which is how `aer replay` sorts its whole input.
pub struct Sequencer {
    lateness: Option<u64>,
    dedup_horizon: u64,
    seen: HashSet<EventId>,
    seen_at: BTreeMap<Time, Vec<EventId>>,
    held: BinaryHeap<Reverse<(Time, EventId, Event)>>,
    max_seen: Option<Time>,
    watermark: Time,
    stats: SequencerStats,
}

/// Sorts a block of events by (time, id). A block already in time order (as audit logs mostly
/// come) only needs each run of equal times sorted by id: a few events each, where sorting the
/// whole block moved every event through a quicksort (3% of a replay's instructions).
fn sort_block(block: &mut [Event]) {
    if block.is_sorted_by_key(|e| e.time) {
        for same_time in block.chunk_by_mut(|a, b| a.time == b.time) {
            same_time.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        }
    } else {
        block.sort_unstable_by(|a, b| (a.time, &a.id).cmp(&(b.time, &b.id)));
    }
}

impl Sequencer {
    pub fn new(lateness: Option<u64>, dedup_horizon: u64) -> Self {
        Sequencer {
            lateness,
            dedup_horizon,
            seen: HashSet::new(),
            seen_at: BTreeMap::new(),
            held: BinaryHeap::new(),
            max_seen: None,
            watermark: 0,
            stats: SequencerStats::default(),
        }
    }

    /// The current watermark: no event will be released at an earlier time.
    pub fn watermark(&self) -> Time {
        self.watermark
    }

    pub fn stats(&self) -> &SequencerStats {
        &self.stats
    }

    /// Ids currently remembered for de-duplication (bounded by the dedup horizon).
    pub fn remembered_ids(&self) -> usize {
        self.seen.len()
    }

    /// Takes one event in arrival order; appends what the watermark now releases to `out`.
    pub fn push(&mut self, event: Event, out: &mut Vec<Sequenced>) {
        if self.seen.contains(&event.id) {
            self.stats.duplicates += 1;
            tracing::debug!(id = %event.id, "duplicate entry id dropped");
            return;
        }
        self.seen.insert(event.id.clone());
        self.seen_at
            .entry(event.time)
            .or_default()
            .push(event.id.clone());
        let at = if event.time < self.watermark {
            self.stats.late += 1;
            tracing::debug!(id = %event.id, time = event.time, watermark = self.watermark, "late event");
            self.watermark
        } else {
            event.time
        };
        self.max_seen = Some(self.max_seen.map_or(event.time, |m| m.max(event.time)));
        self.held.push(Reverse((at, event.id.clone(), event)));
        if let (Some(lateness), Some(max)) = (self.lateness, self.max_seen) {
            self.advance(max.saturating_sub(lateness), out);
        }
    }

    /// Moves the watermark to `to` (never backwards) and releases what it passes.
    pub fn advance(&mut self, to: Time, out: &mut Vec<Sequenced>) {
        self.watermark = self.watermark.max(to);
        while let Some(Reverse((at, _, _))) = self.held.peek() {
            if *at > self.watermark {
                break;
            }
            let Reverse((at, _, event)) = self.held.pop().expect("peeked");
            out.push((at, event));
            self.stats.released += 1;
        }
        // Forget ids that can no longer be re-sent within the horizon.
        let horizon = self.watermark.saturating_sub(self.dedup_horizon);
        while let Some(entry) = self.seen_at.first_entry() {
            if *entry.key() >= horizon {
                break;
            }
            for id in entry.remove() {
                self.seen.remove(&id);
            }
        }
    }

    /// The whole-input form of `Sequencer::new(None, _)` followed by `push` of every event and
    /// `finish`: the first of each id is kept, and events come out in (time, id) order, dealt
    /// into `deal` parts ([`EventChunks::dealt`]: the engine's workers, for a replay). The
    /// input comes in blocks (as the reader decodes it); each block is sorted in place (blocks
    /// shared among the cores). Blocks that follow one another in order (input in time order,
    /// as audit logs are) are then dealt on all cores at once, each block into its pieces of
    /// the parts; blocks that overlap are merged on one, each freed once merged. Either way the
    /// events are never held twice over.
    pub fn sort_all(mut blocks: Vec<Vec<Event>>, deal: usize) -> (EventChunks, SequencerStats) {
        let total: usize = blocks.iter().map(Vec::len).sum();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let started = std::time::Instant::now();
        // The first of each id, found on every core at once: ids are split among the cores by
        // a hash, and each core walks the whole input in order, keeping a set of its own ids
        // only. An event is dropped when the core that owns its id has seen that id before.
        let keep: Vec<Vec<bool>> = {
            let blocks = &blocks;
            let shard = |id: &EventId| (id.stable_hash() % threads as u64) as usize;
            let dropped: Vec<Vec<(usize, usize)>> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..threads)
                    .map(|me| {
                        scope.spawn(move || {
                            // foldhash, as the engine's maps (see `dataflow`): SipHash was
                            // most of this walk's instructions.
                            let mut seen: HashSet<&EventId> =
                                HashSet::with_capacity(total / threads + 1);
                            let mut dropped = Vec::new();
                            for (b, block) in blocks.iter().enumerate() {
                                for (i, event) in block.iter().enumerate() {
                                    let id = &event.id;
                                    if shard(id) == me && !seen.insert(id) {
                                        dropped.push((b, i));
                                    }
                                }
                            }
                            dropped
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("a de-duplication thread panicked"))
                    .collect()
            });
            let mut keep: Vec<Vec<bool>> = blocks.iter().map(|b| vec![true; b.len()]).collect();
            for (b, i) in dropped.into_iter().flatten() {
                keep[b][i] = false;
            }
            keep
        };
        let deduplicated = started.elapsed();
        let share = blocks.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            for (blocks, keep) in blocks.chunks_mut(share).zip(keep.chunks(share)) {
                scope.spawn(move || {
                    for (block, keep) in blocks.iter_mut().zip(keep) {
                        let mut keep = keep.iter();
                        block.retain(|_| *keep.next().expect("one flag per event"));
                        sort_block(block);
                    }
                });
            }
        });
        let sorted = started.elapsed();
        let (blocks, in_order) = join_straddling_seconds(blocks);
        let out = if in_order {
            deal_in_order(blocks, deal, threads)
        } else {
            merge(blocks, deal)
        };
        tracing::debug!(
            dedup_ms = deduplicated.as_millis() as u64,
            sort_ms = (sorted - deduplicated).as_millis() as u64,
            merge_ms = (started.elapsed() - sorted).as_millis() as u64,
            in_order,
            "input sequenced"
        );
        let stats = SequencerStats {
            released: out.len() as u64,
            duplicates: (total - out.len()) as u64,
            late: 0,
        };
        (out, stats)
    }

    /// Releases everything still held, in order, and returns the final watermark.
    pub fn finish(&mut self, out: &mut Vec<Sequenced>) -> Time {
        let end = self.held.iter().map(|Reverse((t, _, _))| *t).max();
        if let Some(end) = end {
            self.advance(end, out);
        }
        self.watermark
    }
}

/// Sorted blocks, without the empty ones, and whether they follow one another in (time, id)
/// order. Input in time order still has seconds that straddle two blocks, whose ids are sorted
/// within each block only: such a second's events are moved to the end of the earlier block
/// and sorted there. Any other overlap means the blocks must be merged.
fn join_straddling_seconds(blocks: Vec<Vec<Event>>) -> (Vec<Vec<Event>>, bool) {
    let mut joined: Vec<Vec<Event>> = Vec::with_capacity(blocks.len());
    let mut in_order = true;
    for mut block in blocks {
        if let (Some(prev), Some(first), true) = (joined.last_mut(), block.first(), in_order) {
            let last = prev.last().expect("no empty block is kept").time;
            if last > first.time {
                in_order = false;
            } else if last == first.time {
                let straddling = block.partition_point(|e| e.time == last);
                prev.extend(block.drain(..straddling));
                let start = prev.partition_point(|e| e.time < last);
                prev[start..].sort_unstable_by(|a, b| a.id.cmp(&b.id));
            }
        }
        if !block.is_empty() {
            joined.push(block);
        }
    }
    (joined, in_order)
}

/// Sorted blocks that follow one another in (time, id) order, dealt into `deal` parts on
/// `threads` cores: the global position of each block's first event is known, so each core
/// deals its blocks into pieces of the parts, and each part is its pieces in block order.
fn deal_in_order(blocks: Vec<Vec<Event>>, deal: usize, threads: usize) -> EventChunks {
    let deal = deal.max(1);
    let mut offsets = Vec::with_capacity(blocks.len());
    let mut offset = 0;
    for block in &blocks {
        offsets.push(offset);
        offset += block.len();
    }
    let share = blocks.len().div_ceil(threads).max(1);
    let mut work: Vec<(usize, Vec<Event>)> = offsets.into_iter().zip(blocks).collect();
    // Per block, its pieces of each part.
    let pieces: Vec<Vec<Vec<Sequenced>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = work
            .chunks_mut(share)
            .map(|blocks| {
                scope.spawn(move || {
                    blocks
                        .iter_mut()
                        .map(|(offset, block)| {
                            let mut pieces: Vec<Vec<Sequenced>> = (0..deal)
                                .map(|_| Vec::with_capacity(block.len() / deal + 1))
                                .collect();
                            for (i, event) in std::mem::take(block).into_iter().enumerate() {
                                pieces[(*offset + i) % deal].push((event.time, event));
                            }
                            pieces
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a dealing thread panicked"))
            .collect()
    });
    let mut parts: Vec<Vec<Vec<Sequenced>>> = vec![Vec::new(); deal];
    for block in pieces {
        for (part, piece) in parts.iter_mut().zip(block) {
            if !piece.is_empty() {
                part.push(piece);
            }
        }
    }
    EventChunks::from_parts(parts)
}

/// Sorted blocks that overlap, merged into `deal` parts on one core, each block freed once
/// merged.
fn merge(blocks: Vec<Vec<Event>>, deal: usize) -> EventChunks {
    let mut sources: Vec<std::vec::IntoIter<Event>> =
        blocks.into_iter().map(Vec::into_iter).collect();
    let mut heads: BinaryHeap<Reverse<(Time, EventId, usize)>> = sources
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            s.as_slice()
                .first()
                .map(|e| Reverse((e.time, e.id.clone(), i)))
        })
        .collect();
    let mut out = EventChunks::dealt(deal);
    // After de-duplication no two events share (time, id), so the block index never decides.
    while let Some(Reverse((_, _, i))) = heads.pop() {
        // Take from this block for as long as it holds the least event: blocks of input
        // that is in time order hardly overlap, so this is mostly one comparison per event.
        loop {
            let event = sources[i].next().expect("a head");
            out.push((event.time, event));
            match sources[i].as_slice().first() {
                Some(next) => {
                    let least = heads
                        .peek()
                        .is_none_or(|Reverse((t, id, _))| (next.time, &next.id) < (*t, id));
                    if !least {
                        heads.push(Reverse((next.time, next.id.clone(), i)));
                        break;
                    }
                }
                // Exhausted: free the block now.
                None => {
                    sources[i] = Vec::new().into_iter();
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str, time: Time) -> Event {
        Event::bare(id, time)
    }

    /// `events` through the streaming path (no lateness bound): its output, and the sequencer
    /// for its statistics.
    fn stream_all(events: &[Event], dedup_horizon: u64) -> (Vec<Sequenced>, Sequencer) {
        let mut s = Sequencer::new(None, dedup_horizon);
        let mut out = Vec::new();
        for e in events.iter().cloned() {
            s.push(e, &mut out);
        }
        s.finish(&mut out);
        (out, s)
    }

    fn texts(pairs: &[(Time, &str)]) -> Vec<(Time, String)> {
        pairs.iter().map(|(t, id)| (*t, id.to_string())).collect()
    }

    fn order(out: &[Sequenced]) -> Vec<(Time, String)> {
        out.iter().map(|(t, e)| (*t, e.id.to_string())).collect()
    }

    #[test]
    fn replay_mode_sorts_everything_and_drops_duplicates() {
        let mut s = Sequencer::new(None, 86_400);
        let mut out = Vec::new();
        for e in [
            ev("c", 30),
            ev("b", 10),
            ev("a", 10),
            ev("b", 10),
            ev("d", 5),
        ] {
            s.push(e, &mut out);
        }
        assert!(out.is_empty(), "nothing released before finish");
        assert_eq!(s.finish(&mut out), 30);
        assert_eq!(
            order(&out),
            texts(&[(5, "d"), (10, "a"), (10, "b"), (30, "c")])
        );
        assert_eq!(s.stats().duplicates, 1);
        assert_eq!(s.stats().late, 0);
    }

    #[test]
    fn sort_all_equals_the_streaming_path_without_lateness() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let events: Vec<Event> = (0..2000)
            .map(|_| {
                let mut e = ev(
                    &format!("id{}", rng.gen_range(0..1500)),
                    rng.gen_range(0..300),
                );
                e.user = format!("U{}", rng.gen_range(0..5)).into();
                e
            })
            .collect();
        let (streamed, s) = stream_all(&events, 10);
        // Blocks of uneven sizes, as the reader makes them.
        let mut blocks: Vec<Vec<Event>> = Vec::new();
        let mut rest = events;
        let mut size = 1;
        while !rest.is_empty() {
            let tail = rest.split_off(size.min(rest.len()));
            blocks.push(std::mem::replace(&mut rest, tail));
            size = size * 3 % 301 + 1;
        }
        for deal in [1, 2, 3] {
            let (sorted, stats) = Sequencer::sort_all(blocks.clone(), deal);
            assert_eq!(sorted.deal(), deal);
            assert_eq!(sorted.iter().cloned().collect::<Vec<_>>(), streamed);
            assert_eq!(sorted.into_iter().collect::<Vec<_>>(), streamed);
            assert_eq!(&stats, s.stats());
        }
        let stats = Sequencer::sort_all(blocks, 1).1;
        assert!(stats.duplicates > 0);
    }

    /// Input in time order (as audit logs mostly come), with many events per second in no
    /// order of id, and one block out of time order: `sort_block`'s two paths.
    #[test]
    fn sort_all_orders_ids_within_each_second_of_time_ordered_blocks() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut time = 0;
        let mut events: Vec<Event> = (0..3000)
            .map(|_| {
                time += rng.gen_range(0..3);
                ev(&format!("id{}", rng.gen_range(0..100_000)), time)
            })
            .collect();
        events[1510..1530].reverse();
        let (streamed, s) = stream_all(&events, 10);
        let blocks: Vec<Vec<Event>> = events.chunks(500).map(<[Event]>::to_vec).collect();
        // Both paths are taken: a block in time order whose ids are not, and a block that is not.
        assert!(blocks[0].is_sorted_by_key(|e| e.time));
        assert!(!blocks[0].is_sorted_by_key(|e| (e.time, e.id.clone())));
        assert!(!blocks[3].is_sorted_by_key(|e| e.time));
        let (sorted, stats) = Sequencer::sort_all(blocks, 2);
        assert_eq!(sorted.into_iter().collect::<Vec<_>>(), streamed);
        assert_eq!(&stats, s.stats());
    }

    /// Input in (time, id) order cut into blocks of uneven sizes, each shuffled, some ids
    /// re-sent: the blocks follow one another once sorted, so they are dealt on all cores
    /// without a merge, into as many parts as asked; the result is the streaming path's.
    #[test]
    fn blocks_in_order_are_dealt_without_a_merge() {
        use rand::seq::SliceRandom;
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let mut time = 0;
        let mut events: Vec<Event> = (0..5000)
            .map(|i| {
                time += rng.gen_range(0..2);
                ev(&format!("{:04}-{i}", rng.gen_range(0..10_000)), time)
            })
            .collect();
        // Re-sent entries, each next to its first sending (so in the same block or the next).
        for i in (100..4900).step_by(97) {
            let again = events[i].clone();
            events.insert(i + 1, again);
        }
        let (streamed, s) = stream_all(&events, 1_000_000);
        let mut blocks: Vec<Vec<Event>> = Vec::new();
        let mut rest = events.as_slice();
        let mut size = 7;
        while !rest.is_empty() {
            let (block, tail) = rest.split_at(size.min(rest.len()));
            let mut block = block.to_vec();
            block.shuffle(&mut rng);
            blocks.push(block);
            rest = tail;
            size = size * 5 % 613 + 1;
        }
        // The blocks as `sort_all` sees them before dealing: the first of each id, sorted.
        let mut seen = std::collections::HashSet::new();
        let mut sorted_blocks = blocks.clone();
        for block in &mut sorted_blocks {
            block.retain(|e| seen.insert(e.id.clone()));
            sort_block(block);
        }
        // Seconds straddle blocks (their ids out of order across the cut), and yet the blocks
        // take the dealing path.
        let straddling = sorted_blocks
            .windows(2)
            .filter(|w| match (w[0].last(), w[1].first()) {
                (Some(a), Some(b)) => a.time == b.time && a.id > b.id,
                _ => false,
            })
            .count();
        assert!(straddling > 3, "{straddling}");
        let (joined, in_order) = join_straddling_seconds(sorted_blocks);
        assert!(in_order, "the test's blocks take the dealing path");
        let flat: Vec<&Event> = joined.iter().flatten().collect();
        assert!(flat
            .windows(2)
            .all(|w| (w[0].time, &w[0].id) < (w[1].time, &w[1].id)));
        for deal in [1, 2, 3, 4] {
            let (sorted, stats) = Sequencer::sort_all(blocks.clone(), deal);
            assert_eq!(sorted.deal(), deal);
            assert_eq!(sorted.len(), streamed.len());
            assert_eq!(sorted.iter().cloned().collect::<Vec<_>>(), streamed);
            assert_eq!(&stats, s.stats());
            // Each part holds every deal-th event.
            for (w, part) in sorted.clone().into_parts().into_iter().enumerate() {
                let expected: Vec<Sequenced> =
                    streamed.iter().skip(w).step_by(deal).cloned().collect();
                assert_eq!(part.into_iter().collect::<Vec<_>>(), expected);
            }
        }
        assert!(s.stats().duplicates > 0);
    }

    #[test]
    fn live_mode_reorders_within_lateness_and_clamps_late_events() {
        let mut s = Sequencer::new(Some(5), 86_400);
        let mut out = Vec::new();
        s.push(ev("x", 100), &mut out); // watermark 95
        s.push(ev("y", 97), &mut out); // within lateness: held, in order
        s.push(ev("z", 90), &mut out); // late: processed at 95
        s.push(ev("w", 106), &mut out); // watermark 101: releases z@95, y@97, x@100
        assert_eq!(order(&out), texts(&[(95, "z"), (97, "y"), (100, "x")]));
        assert_eq!(s.stats().late, 1);
        s.finish(&mut out);
        assert_eq!(order(&out)[3], (106, "w".to_string()));
    }

    #[test]
    fn dedup_memory_is_bounded_by_the_horizon() {
        let mut s = Sequencer::new(Some(0), 100);
        let mut out = Vec::new();
        for t in 0..10_000u64 {
            s.push(ev(&format!("id{t}"), t), &mut out);
        }
        assert!(s.remembered_ids() <= 101, "{}", s.remembered_ids());
        // A re-send inside the horizon is still caught.
        s.push(ev("id9990", 9990), &mut out);
        assert_eq!(s.stats().duplicates, 1);
    }
}
