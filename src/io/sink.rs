//! Output sinks for `aer replay`: JSON-lines files written in a canonical order (so the same input
//! gives byte-identical files whatever the worker count), and the pretty `summary.json`.

use serde::Serialize;
use std::io::{BufWriter, Write};
use std::path::Path;

/// Errors writing output.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot encode a record for {path}: {source}")]
    Encode {
        path: String,
        source: serde_json::Error,
    },
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> SinkError + '_ {
    move |source| SinkError::Write {
        path: path.display().to_string(),
        source,
    }
}

/// Writes one JSON object per line, in the order given, atomically (temp file, then rename).
pub fn write_jsonl<T: Serialize>(path: &Path, records: &[T]) -> Result<(), SinkError> {
    let tmp = path.with_extension("jsonl.tmp");
    let file = std::fs::File::create(&tmp).map_err(write_err(path))?;
    let mut out = BufWriter::new(file);
    for record in records {
        serde_json::to_writer(&mut out, record).map_err(|source| SinkError::Encode {
            path: path.display().to_string(),
            source,
        })?;
        out.write_all(b"\n").map_err(write_err(path))?;
    }
    out.flush().map_err(write_err(path))?;
    drop(out);
    std::fs::rename(&tmp, path).map_err(write_err(path))
}

/// Writes a pretty JSON document.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), SinkError> {
    let text = serde_json::to_string_pretty(value).map_err(|source| SinkError::Encode {
        path: path.display().to_string(),
        source,
    })?;
    std::fs::write(path, text + "\n").map_err(write_err(path))
}
