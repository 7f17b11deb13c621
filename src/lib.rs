//! aer: a real-time Anomaly Event Response engine for SaaS audit logs.
//!
//! Sources in [`io`] decode and sequence Slack audit entries; the [`dataflow`] graph detects
//! anomalies incrementally; [`reference`](mod@reference) is the plain batch implementation the
//! dataflow is tested against; [`replay`] runs the pipeline over files; [`generate`] makes
//! synthetic workloads with labelled attacks; [`bench`](mod@bench) measures throughput, memory
//! and live latency; [`allocator`] holds the allocator's settings.

pub mod allocator;
pub mod api;
pub mod bench;
pub mod cli;
pub mod config;
pub mod dataflow;
pub mod fault;
pub mod generate;
pub mod io;
pub mod model;
pub mod reference;
pub mod replay;
pub mod response;
pub mod run;
