//! Sources and sinks: decoding Slack audit entries ([`codec`]), reading files and stdin
//! ([`source`]), ordering and de-duplicating what they yield ([`sequencer`]), and writing
//! `aer replay`'s output files ([`sink`]).

pub mod codec;
pub mod sequencer;
pub mod sink;
pub mod source;
