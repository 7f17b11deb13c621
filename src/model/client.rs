//! Pure helpers the heuristic detectors share: a user agent's client family (Slack's own
//! clients, browsers, scripted clients) and the network prefixes of an IP.

use std::net::IpAddr;

/// The client family of a user agent, and whether it is a scripted client (one of `scripted`,
/// lower-case substrings such as `curl/`).
///
/// Slack's clients are recognised first (desktop: `Slack_SSB` or `Slack/... Electron`; iOS:
/// `com.tinyspeck.chatlyio`; Android: `Slack/... Android`), then scripted clients, then
/// browsers by their product token (Edge, Firefox, Chrome, Safari), and otherwise the first
/// product token (`okhttp`, `sshd`, ...).
pub fn client_family(ua: &str, scripted: &[String]) -> (String, bool) {
    let lower = ua.to_ascii_lowercase();
    if lower.contains("slack_ssb") || (lower.contains("slack/") && lower.contains("electron")) {
        return ("Slack desktop".into(), false);
    }
    if lower.contains("com.tinyspeck.chatlyio")
        || (lower.contains("slack") && lower.contains("iphone"))
    {
        return ("Slack iOS".into(), false);
    }
    if lower.contains("slack") && lower.contains("android") {
        return ("Slack Android".into(), false);
    }
    if let Some(s) = scripted.iter().find(|s| lower.contains(s.as_str())) {
        return (s.trim_end_matches('/').to_string(), true);
    }
    for (token, family) in [
        ("edg/", "Edge"),
        ("firefox/", "Firefox"),
        ("chrome/", "Chrome"),
        ("safari/", "Safari"),
    ] {
        if lower.contains(token) {
            return (family.into(), false);
        }
    }
    let first = lower
        .split(['/', ' ', ';', '('])
        .find(|t| !t.is_empty())
        .unwrap_or("unknown");
    (first.to_string(), false)
}

/// The prefix of `ip` with `v4` bits (IPv4) or `v6` bits (IPv6), as `a.b.c.0/24`-style text.
pub fn prefix(ip: &str, v4: u8, v6: u8) -> Option<String> {
    let addr: IpAddr = ip.parse().ok()?;
    let net = match addr {
        IpAddr::V4(_) => ipnet::IpNet::new(addr, v4).ok()?,
        IpAddr::V6(_) => ipnet::IpNet::new(addr, v6).ok()?,
    };
    Some(net.trunc().to_string())
}

/// The network part of a session fingerprint: the ASN when known, else the /24 (/64).
pub fn fingerprint_net(ip: Option<&str>, asn: Option<u32>) -> Option<String> {
    match asn {
        Some(a) => Some(format!("AS{a}")),
        None => prefix(ip?, 24, 64),
    }
}

/// The prefix the `ip_address` detector learns: the /16 (IPv6: /32).
pub fn novelty_prefix(ip: &str) -> Option<String> {
    prefix(ip, 16, 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_user_agents_classify() {
        let s = crate::config::default_scripted_clients();
        let cases = [
            ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Slack/4.41.105 Chrome/128.0.6613.186 Electron/32.2.2 Safari/537.36 Sonic Slack_SSB/4.41.105", "Slack desktop", false),
            ("com.tinyspeck.chatlyio/24.11.10 (iPhone; iOS 18.1.1; Scale/3.00)", "Slack iOS", false),
            ("Slack/24.11.10.0 (Android 14; Pixel 8)", "Slack Android", false),
            ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36", "Chrome", false),
            ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.2903.86", "Edge", false),
            ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15", "Safari", false),
            ("Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0", "Firefox", false),
            ("curl/8.5.0", "curl", true),
            ("python-requests/2.31.0", "python-requests", true),
            ("Go-http-client/2.0", "go-http-client", true),
            ("Wget/1.21.4", "wget", true),
            ("okhttp/4.12.0", "okhttp", true),
            ("SomeBot 1.0", "somebot", false),
        ];
        for (ua, family, is_scripted) in cases {
            assert_eq!(
                client_family(ua, &s),
                (family.to_string(), is_scripted),
                "{ua}"
            );
        }
    }

    #[test]
    fn prefixes() {
        assert_eq!(prefix("1.2.3.4", 24, 64).as_deref(), Some("1.2.3.0/24"));
        assert_eq!(novelty_prefix("1.2.3.4").as_deref(), Some("1.2.0.0/16"));
        assert_eq!(
            prefix("2001:db8:1:2::5", 24, 64).as_deref(),
            Some("2001:db8:1:2::/64")
        );
        assert_eq!(
            fingerprint_net(Some("1.2.3.4"), Some(7)).as_deref(),
            Some("AS7")
        );
        assert_eq!(fingerprint_net(Some("x"), None), None);
    }
}

/// What a heuristic detector found on one event. Both engines decide *whether* something was
/// found independently; this renders it (reason, details, explanation) in one place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    Tor {
        ip: String,
    },
    ScriptedClient {
        client: String,
    },
    /// The session's learned user agent and network, and the event's.
    Fingerprint {
        first_ua: Option<super::ArcStr>,
        first_net: Option<String>,
        net: Option<String>,
    },
    NewFamily {
        family: String,
        active: u64,
    },
    NewAsn {
        asn: u32,
    },
    NewPrefix {
        prefix: String,
    },
}

impl Finding {
    /// The anomaly for this finding on `event` at `now`; `known` is how many values of the kind
    /// the user was known with, `history` the detectors' H.
    pub fn anomaly(
        self,
        event: &super::Event,
        now: super::Time,
        known: usize,
        history: u64,
    ) -> super::Anomaly {
        let user = &event.user;
        let ua = event.ua.as_deref().unwrap_or_default().to_string();
        let h = super::human_secs(history);
        let (reason, details, why) = match self {
            Finding::Tor { ip } => (
                "tor",
                vec![("ip", ip.clone())],
                format!("{user} used a Tor exit node ({ip})"),
            ),
            Finding::ScriptedClient { client } => (
                "unexpected_client",
                vec![("client", client.clone()), ("ua", ua)],
                format!("{user} used a scripted client ({client})"),
            ),
            Finding::Fingerprint {
                first_ua,
                first_net,
                net,
            } => {
                let show = |ua: Option<&str>, net: Option<&str>| {
                    format!("{} from {}", ua.unwrap_or("?"), net.unwrap_or("?"))
                };
                let first = show(first_ua.as_deref(), first_net.as_deref());
                let now_fp = show(event.ua.as_deref(), net.as_deref());
                let why = format!(
                    "session {} of {user} began as [{first}] and is now used as [{now_fp}]",
                    event.session.as_deref().unwrap_or("")
                );
                (
                    "session_fingerprint",
                    vec![("first_fingerprint", first), ("new_fingerprint", now_fp)],
                    why,
                )
            }
            Finding::NewFamily { family, active } => (
                "unexpected_user_agent",
                vec![("family", family.clone()), ("ua", ua)],
                format!("{user} used {family} for the first time in {h} ({active} events)"),
            ),
            Finding::NewAsn { asn } => (
                "asn",
                vec![("asn", format!("AS{asn}"))],
                format!("{user} connected from AS{asn} for the first time in {h}"),
            ),
            Finding::NewPrefix { prefix } => (
                "ip_address",
                vec![("prefix", prefix.clone())],
                format!("{user} connected from {prefix} for the first time in {h}"),
            ),
        };
        super::Anomaly::heuristic(event, now, reason, details, known, history, why)
    }
}
