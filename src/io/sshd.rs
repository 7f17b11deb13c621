//! The sshd adapter: converts OpenSSH syslog lines into Slack-shaped audit entries so that a
//! server's authentication log can go through the same pipeline. `Failed password|publickey|none
//! for [invalid user] U from IP` becomes `user_login_failed` (a `message repeated N times: [...]`
//! line becomes N entries), `Accepted ... for U from IP` becomes `user_login`; every other line is
//! counted as skipped. Syslog lines carry no year and no zone: the year is a parameter and times
//! are taken as UTC.

use chrono::NaiveDateTime;
use serde_json::json;
use std::io::{BufRead, Write};

/// Adapter settings.
#[derive(Clone, Debug)]
pub struct SshdOptions {
    pub year: i32,
    /// The `context.location.id` given to every entry.
    pub enterprise: String,
}

/// What a conversion did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SshdStats {
    pub lines: u64,
    pub failed: u64,
    pub accepted: u64,
    /// Lines that are not authentication results.
    pub skipped: u64,
    /// Authentication lines whose timestamp could not be read.
    pub bad_time: u64,
}

/// One authentication result found in a line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthResult {
    pub time: u64,
    pub success: bool,
    pub user: String,
    pub ip: String,
    pub repeat: u64,
}

/// Parses a syslog line; `Ok(None)` for lines that are not authentication results.
pub fn parse_line(line: &str, year: i32) -> Result<Option<AuthResult>, String> {
    let Some((_, message)) = line.split_once("]: ") else {
        return Ok(None);
    };
    let (message, repeat) = match message.strip_prefix("message repeated ") {
        Some(rest) => {
            let (n, rest) = rest.split_once(" times: [").unwrap_or(("1", rest));
            (
                rest.trim().trim_end_matches(']').trim(),
                n.parse().unwrap_or(1),
            )
        }
        None => (message, 1),
    };
    let (success, rest) = if let Some(rest) = message.strip_prefix("Failed ") {
        (false, rest)
    } else if let Some(rest) = message.strip_prefix("Accepted ") {
        (true, rest)
    } else {
        return Ok(None);
    };
    // "<method> for [invalid user ]<user> from <ip> port <n> ssh2"
    let Some((_, rest)) = rest.split_once(" for ") else {
        return Ok(None);
    };
    let rest = rest.strip_prefix("invalid user ").unwrap_or(rest);
    let Some((user, rest)) = rest.rsplit_once(" from ") else {
        return Ok(None);
    };
    let ip = rest.split_whitespace().next().unwrap_or_default();
    if ip.parse::<std::net::IpAddr>().is_err() {
        return Ok(None);
    }
    let stamp = line.get(..15).ok_or("line too short for a timestamp")?;
    let text = format!(
        "{year} {}",
        stamp.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    let time = NaiveDateTime::parse_from_str(&text, "%Y %b %d %H:%M:%S")
        .map_err(|e| format!("bad syslog time {stamp:?}: {e}"))?
        .and_utc()
        .timestamp();
    Ok(Some(AuthResult {
        time: u64::try_from(time).map_err(|_| "time before 1970")?,
        success,
        user: user.to_string(),
        ip: ip.to_string(),
        repeat,
    }))
}

/// Converts a whole log, writing one Slack-shaped JSON entry per authentication result.
pub fn convert(
    input: impl BufRead,
    out: &mut impl Write,
    options: &SshdOptions,
) -> std::io::Result<SshdStats> {
    let mut stats = SshdStats::default();
    for (n, line) in input.lines().enumerate() {
        let line = line?;
        stats.lines += 1;
        let result = match parse_line(&line, options.year) {
            Ok(Some(r)) => r,
            Ok(None) => {
                stats.skipped += 1;
                continue;
            }
            Err(e) => {
                tracing::warn!(line = n + 1, error = %e, "sshd line skipped");
                stats.bad_time += 1;
                continue;
            }
        };
        for i in 0..result.repeat {
            let id = super::codec::derived_id(&format!("{}\u{0}{i}\u{0}{line}", n + 1));
            let action = if result.success {
                stats.accepted += 1;
                "user_login"
            } else {
                stats.failed += 1;
                "user_login_failed"
            };
            let entry = json!({
                "id": id,
                "date_create": result.time,
                "action": action,
                "actor": {"type": "user", "user": {"id": result.user, "name": result.user}},
                "entity": {"type": "user", "user": {"id": result.user, "name": result.user}},
                "context": {
                    "location": {"type": "enterprise", "id": options.enterprise, "name": options.enterprise},
                    "ua": "sshd",
                    "ip_address": result.ip,
                },
                "details": {"source": "sshd", "line": n + 1},
            });
            serde_json::to_writer(&mut *out, &entry)?;
            out.write_all(b"\n")?;
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_lines_parse_and_others_are_skipped() {
        let r = parse_line(
            "Dec 10 06:55:48 LabSZ sshd[24200]: Failed password for invalid user webmaster from 173.234.31.186 port 38926 ssh2",
            2016,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.user, "webmaster");
        assert_eq!(r.ip, "173.234.31.186");
        assert!(!r.success);
        assert_eq!(r.time, 1_481_352_948); // 2016-12-10 06:55:48 UTC
        let r = parse_line(
            "Dec 10 07:13:56 LabSZ sshd[24227]: message repeated 5 times: [ Failed password for root from 5.36.59.76 port 42393 ssh2]",
            2016,
        )
        .unwrap()
        .unwrap();
        assert_eq!((r.user.as_str(), r.repeat), ("root", 5));
        let r = parse_line(
            "Dec 10 09:32:20 LabSZ sshd[24680]: Accepted password for fztu from 119.137.62.142 port 49116 ssh2",
            2016,
        )
        .unwrap()
        .unwrap();
        assert!(r.success);
        assert_eq!(
            parse_line(
                "Dec 10 06:55:46 LabSZ sshd[24200]: Invalid user webmaster from 173.234.31.186",
                2016
            ),
            Ok(None)
        );
        assert!(parse_line(
            "Xyz 99 99:99:99 h sshd[1]: Failed password for a from 1.2.3.4 port 1",
            2016
        )
        .is_err());
    }
}
