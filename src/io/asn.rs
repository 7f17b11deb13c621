//! The IP-to-ASN table in the public ip2asn TSV format (`range_start  range_end  AS_number
//! country  description`, IPv4 or IPv6), looked up by range at ingest. AS number 0 means "not
//! routed" and is treated as unknown.

use std::net::IpAddr;
use std::path::Path;

/// Errors loading a table.
#[derive(Debug, thiserror::Error)]
pub enum AsnError {
    #[error("cannot read ASN table {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("ASN table {path} line {line}: {message}")]
    Line {
        path: String,
        line: usize,
        message: String,
    },
}

/// Sorted, non-overlapping ranges of addresses (IPv4 mapped into IPv6) with their AS number.
#[derive(Clone, Debug, Default)]
pub struct AsnTable {
    ranges: Vec<(u128, u128, u32)>,
}

fn key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl AsnTable {
    /// Parses the TSV text; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<AsnTable, AsnError> {
        let mut ranges = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |message: String| AsnError::Line {
                path: path.to_string(),
                line: i + 1,
                message,
            };
            let mut cols = line.split('\t');
            let mut ip = |what: &str| -> Result<IpAddr, AsnError> {
                let text = cols.next().ok_or_else(|| err(format!("no {what}")))?;
                text.trim()
                    .parse()
                    .map_err(|e| err(format!("bad {what} {text:?}: {e}")))
            };
            let (start, end) = (ip("range start")?, ip("range end")?);
            let asn_text = cols.next().ok_or_else(|| err("no AS number".into()))?;
            let asn: u32 = asn_text
                .trim()
                .trim_start_matches("AS")
                .parse()
                .map_err(|e| err(format!("bad AS number {asn_text:?}: {e}")))?;
            let (start, end) = (key(start), key(end));
            if end < start {
                return Err(err("range end before start".into()));
            }
            if asn != 0 {
                ranges.push((start, end, asn));
            }
        }
        ranges.sort_unstable();
        Ok(AsnTable { ranges })
    }

    pub fn load(path: &Path) -> Result<AsnTable, AsnError> {
        let text = std::fs::read_to_string(path).map_err(|source| AsnError::Read {
            path: path.display().to_string(),
            source,
        })?;
        AsnTable::parse(&text, &path.display().to_string())
    }

    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The AS number of `ip`, if a range holds it.
    pub fn lookup(&self, ip: &str) -> Option<u32> {
        let k = key(ip.parse().ok()?);
        let i = self.ranges.partition_point(|(start, _, _)| *start <= k);
        let (start, end, asn) = self.ranges.get(i.checked_sub(1)?)?;
        (*start <= k && k <= *end).then_some(*asn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "1.0.0.0\t1.0.0.255\t13335\tUS\tCLOUDFLARENET\n\
                         1.0.1.0\t1.0.3.255\t0\tNone\tNot routed\n\
                         8.8.8.0\t8.8.8.255\t15169\tUS\tGOOGLE\n\
                         2001:4860::\t2001:4860:ffff:ffff:ffff:ffff:ffff:ffff\t15169\tUS\tGOOGLE\n";

    #[test]
    fn lookups_by_range_v4_and_v6() {
        let t = AsnTable::parse(TABLE, "t").unwrap();
        assert_eq!(t.len(), 3, "not-routed ranges are dropped");
        assert_eq!(t.lookup("1.0.0.0"), Some(13335));
        assert_eq!(t.lookup("1.0.0.255"), Some(13335));
        assert_eq!(t.lookup("1.0.1.5"), None);
        assert_eq!(t.lookup("8.8.8.8"), Some(15169));
        assert_eq!(t.lookup("2001:4860::8888"), Some(15169));
        assert_eq!(t.lookup("9.9.9.9"), None);
        assert_eq!(t.lookup("not an ip"), None);
    }

    #[test]
    fn bad_lines_name_the_line() {
        let e = AsnTable::parse("1.0.0.0\tx\t1\n", "t.tsv").unwrap_err();
        assert!(e.to_string().contains("t.tsv line 1"), "{e}");
    }
}
