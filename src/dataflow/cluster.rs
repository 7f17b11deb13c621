//! Where the dataflow's workers run: threads in this process, or timely's own cluster mode
//! (`--processes N --process I --hostfile F`), where every process runs the same graph with
//! `--workers` threads and timely connects them over TCP. This module owns the hostfile format
//! and the translation to `timely::Config`; there is no distribution layer of our own.

use std::path::{Path, PathBuf};

/// Errors in the cluster arguments or the hostfile.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot read hostfile {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("hostfile {path} line {line}: {message}")]
    Line {
        path: String,
        line: usize,
        message: String,
    },
    #[error("hostfile {path} lists {found} processes, but --processes is {expected}")]
    Count {
        path: String,
        found: usize,
        expected: usize,
    },
    #[error("--process {process} is out of range for --processes {processes} (0 to {last})", last = processes - 1)]
    Index { process: usize, processes: usize },
    #[error("--processes must be at least 1")]
    NoProcesses,
    #[error("--processes {0} needs --hostfile (one host:port per process)")]
    NoHostfile(usize),
}

/// This process's place in a timely cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// How many processes take part.
    pub processes: usize,
    /// This process's index, 0-based. Process 0 gathers the outputs.
    pub process: usize,
    /// `host:port` of every process, in process order.
    pub addresses: Vec<String>,
}

impl Cluster {
    /// Reads the hostfile: one `host:port` per process, in process order; blank lines and lines
    /// starting with `#` are ignored.
    pub fn from_hostfile(
        processes: usize,
        process: usize,
        hostfile: &Path,
    ) -> Result<Cluster, ClusterError> {
        if processes == 0 {
            return Err(ClusterError::NoProcesses);
        }
        if process >= processes {
            return Err(ClusterError::Index { process, processes });
        }
        let path = hostfile.display().to_string();
        let text = std::fs::read_to_string(hostfile).map_err(|source| ClusterError::Read {
            path: path.clone(),
            source,
        })?;
        let mut addresses = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let valid = line
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid || line.contains(char::is_whitespace) {
                return Err(ClusterError::Line {
                    path,
                    line: n + 1,
                    message: format!("expected host:port, found {line:?}"),
                });
            }
            addresses.push(line.to_string());
        }
        if addresses.len() != processes {
            return Err(ClusterError::Count {
                path,
                found: addresses.len(),
                expected: processes,
            });
        }
        Ok(Cluster {
            processes,
            process,
            addresses,
        })
    }

    /// From the command line's three options: no cluster when `--processes` is absent or 1
    /// without a hostfile.
    pub fn from_args(
        processes: Option<usize>,
        process: usize,
        hostfile: Option<&PathBuf>,
    ) -> Result<Option<Cluster>, ClusterError> {
        match (processes, hostfile) {
            (None | Some(1), None) if process == 0 => Ok(None),
            (None | Some(1), None) => Err(ClusterError::Index {
                process,
                processes: 1,
            }),
            (Some(0), _) => Err(ClusterError::NoProcesses),
            (Some(n), None) => Err(ClusterError::NoHostfile(n)),
            (n, Some(file)) => Cluster::from_hostfile(n.unwrap_or(1), process, file).map(Some),
        }
    }
}

/// The dataflow's workers: `threads` per process, in one process or a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub threads: usize,
    pub cluster: Option<Cluster>,
}

impl Placement {
    /// `threads` workers in this process alone.
    pub fn local(threads: usize) -> Self {
        Placement {
            threads: threads.max(1),
            cluster: None,
        }
    }

    /// Whether this process gathers the outputs (global worker 0 lives here).
    pub fn gathers(&self) -> bool {
        self.cluster.as_ref().is_none_or(|c| c.process == 0)
    }

    /// Workers in all processes: the engine deals its input round robin among them.
    pub fn peers(&self) -> usize {
        self.threads.max(1) * self.process().1
    }

    /// The process index and count (0 and 1 without a cluster).
    pub fn process(&self) -> (usize, usize) {
        self.cluster
            .as_ref()
            .map_or((0, 1), |c| (c.process, c.processes))
    }

    /// timely's configuration for this placement.
    pub fn timely_config(&self) -> timely::Config {
        match &self.cluster {
            None => timely::Config::process(self.threads),
            Some(cluster) => timely::Config {
                communication: timely::CommunicationConfig::Cluster {
                    threads: self.threads,
                    process: cluster.process,
                    addresses: cluster.addresses.clone(),
                    report: false,
                    zerocopy: false,
                },
                worker: timely::WorkerConfig::default(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hostfile(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), text).expect("write");
        file
    }

    #[test]
    fn reads_a_hostfile_with_comments_and_blank_lines() {
        let file = hostfile("# two processes\n127.0.0.1:7001\n\n127.0.0.1:7002\n");
        let cluster = Cluster::from_hostfile(2, 1, file.path()).expect("valid");
        assert_eq!(cluster.addresses, ["127.0.0.1:7001", "127.0.0.1:7002"]);
        assert_eq!(cluster.process, 1);
        let placement = Placement {
            threads: 2,
            cluster: Some(cluster),
        };
        assert!(!placement.gathers());
        assert_eq!(placement.process(), (1, 2));
    }

    #[test]
    fn refuses_bad_hostfiles_and_arguments() {
        let file = hostfile("127.0.0.1:7001\n");
        let err = Cluster::from_hostfile(2, 0, file.path()).unwrap_err();
        assert!(err.to_string().contains("lists 1 processes"), "{err}");
        let file = hostfile("127.0.0.1\n127.0.0.1:x\n");
        let err = Cluster::from_hostfile(2, 0, file.path()).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        let err = Cluster::from_hostfile(2, 2, file.path()).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
        let err = Cluster::from_args(Some(2), 0, None).unwrap_err();
        assert!(err.to_string().contains("needs --hostfile"), "{err}");
        assert_eq!(Cluster::from_args(None, 0, None).expect("local"), None);
        assert!(Cluster::from_args(None, 1, None).is_err());
    }
}
