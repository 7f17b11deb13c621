//! `aer generate`: a synthetic Slack Enterprise Grid audit-log workload. Several enterprises with
//! their own size, time zone and habits; users who work office hours on weekdays from one or two
//! devices, with sessions, IPs and user agents; Slack action names in realistic proportions; and
//! injected attacks (mass download, mass public sharing, credential testing from one IP), each
//! written to a labels file so that a replay can be scored.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::io::Write;

/// Workload parameters.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Approximate number of benign events.
    pub events: u64,
    pub enterprises: u32,
    pub days: u32,
    pub seed: u64,
    /// Unix time of the first day's midnight (UTC).
    pub start: u64,
    /// Attacks to inject per enterprise (of each kind, spread over the last days).
    pub attacks_per_enterprise: u32,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            events: 200_000,
            enterprises: 4,
            days: 7,
            seed: 42,
            start: 1_767_225_600, // 2026-01-01 00:00:00 UTC, a Thursday
            attacks_per_enterprise: 1,
        }
    }
}

/// One injected attack, as written to the labels file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    pub kind: String,
    /// The reason a detector should report.
    pub expected_reason: String,
    pub enterprise: String,
    /// The user (or for credential testing, the source IP) the anomaly should name.
    pub key: String,
    pub start: u64,
    pub end: u64,
    pub events: u64,
}

/// What was generated.
#[derive(Debug, Default)]
pub struct Generated {
    pub lines: u64,
    pub labels: Vec<Label>,
    /// A Tor exit-node list that holds the injected Tor sign-ins' addresses (and others).
    pub tor_exits: Vec<String>,
}

const SESSION_BASE: u64 = 8_472_881_900;

struct Device {
    ua: &'static str,
    ip: String,
}

struct User {
    id: String,
    name: String,
    /// Mean events per working hour.
    rate: f64,
    devices: Vec<Device>,
}

struct Enterprise {
    id: String,
    name: String,
    /// Offset of local time from UTC, hours.
    tz: i64,
    users: Vec<User>,
    /// This enterprise's appetite for downloads and shares.
    download_bias: f64,
    share_bias: f64,
}

const UAS: [&str; 6] = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Slack/4.41.105 Chrome/128.0.6613.186 Electron/32.2.2 Safari/537.36 Sonic Slack_SSB/4.41.105",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "com.tinyspeck.chatlyio/24.11.10 (iPhone; iOS 18.1.1; Scale/3.00)",
    "Slack/24.11.10.0 (Android 14; Pixel 8)",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
];

/// Benign actions and their relative weights.
const ACTIONS: [(&str, u32); 10] = [
    ("file_downloaded", 30),
    ("file_uploaded", 14),
    ("file_shared", 10),
    ("channel_joined", 8),
    ("user_channel_join", 6),
    ("file_public_link_created", 1),
    ("pref.profile_changed", 1),
    ("channel_created", 2),
    ("user_login_failed", 1),
    ("app_installed", 1),
];

fn make_enterprises(opts: &GenerateOptions, rng: &mut ChaCha8Rng) -> Vec<Enterprise> {
    let names = [
        "Birdland",
        "Blue Note",
        "Village Vanguard",
        "Minton's",
        "Five Spot",
        "Half Note",
        "Jazz Gallery",
        "Smalls",
        "Dizzy's",
        "Iridium",
    ];
    (0..opts.enterprises)
        .map(|e| {
            let size = [40usize, 120, 300, 80, 200][e as usize % 5];
            let tz = [-8i64, -5, 0, 1, 9][e as usize % 5];
            let users = (0..size)
                .map(|u| {
                    let ndev = if rng.gen_bool(0.4) { 2 } else { 1 };
                    let devices = (0..ndev)
                        .map(|_| Device {
                            ua: UAS[rng.gen_range(0..UAS.len())],
                            ip: format!(
                                "{}.{}.{}.{}",
                                [23, 52, 64, 81, 104][e as usize % 5],
                                rng.gen_range(0..256),
                                rng.gen_range(0..256),
                                rng.gen_range(1..255)
                            ),
                        })
                        .collect();
                    User {
                        id: format!("W{:02}{:06}", e, u),
                        name: format!("user{u}"),
                        // Heavy-tailed activity: most users light, a few heavy.
                        rate: 2.0 + 30.0 * rng.gen::<f64>().powi(3),
                        devices,
                    }
                })
                .collect();
            Enterprise {
                id: format!(
                    "E{:02}{}",
                    e,
                    ["BIRD", "NOTE", "VANG", "MINT", "SPOT"][e as usize % 5]
                ),
                name: names[e as usize % names.len()].to_string(),
                tz,
                users,
                download_bias: 0.5 + rng.gen::<f64>(),
                share_bias: 0.5 + rng.gen::<f64>(),
            }
        })
        .collect()
}

struct Writer<'a, W: Write> {
    out: &'a mut W,
    lines: u64,
    next_id: u64,
    seed: u64,
}

impl<W: Write> Writer<'_, W> {
    #[allow(clippy::too_many_arguments)]
    fn entry(
        &mut self,
        time: u64,
        action: &str,
        ent: &Enterprise,
        user: &User,
        session: u64,
        ip: &str,
        ua: &str,
        attack: bool,
    ) -> std::io::Result<()> {
        self.next_id += 1;
        let id = format!(
            "{}{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            if attack { "attack-" } else { "" },
            (self.seed as u32) ^ (self.next_id as u32).wrapping_mul(2_654_435_761),
            (self.next_id >> 32) & 0xffff,
            self.next_id & 0xfff,
            (self.next_id >> 12) & 0xfff,
            self.next_id
        );
        let entity = if action.starts_with("file") {
            json!({"type":"file","file":{"id":format!("F{:08X}", self.next_id),"name":"report.pdf","filetype":"pdf","title":"report"}})
        } else {
            json!({"type":"user","user":{"id":user.id,"name":user.name}})
        };
        let mut context = json!({
            "location": {"type":"enterprise","id":ent.id,"name":ent.name,"domain":ent.name.to_lowercase().replace([' ', '\''], "")},
            "ua": ua,
            "ip_address": ip,
        });
        if session != 0 {
            context["session_id"] = json!(session.to_string());
        }
        let line = json!({
            "id": id,
            "date_create": time,
            "action": action,
            "actor": {"type":"user","user":{"id":user.id,"name":user.name,"email":format!("{}@{}.example.com", user.name, ent.name.to_lowercase().replace([' ', '\''], ""))}},
            "entity": entity,
            "context": context,
            "details": {},
        });
        serde_json::to_writer(&mut *self.out, &line)?;
        self.out.write_all(b"\n")?;
        self.lines += 1;
        Ok(())
    }
}

/// Writes the workload as JSON lines to `out` in time order; returns what was written.
pub fn generate<W: Write>(opts: &GenerateOptions, out: &mut W) -> std::io::Result<Generated> {
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let enterprises = make_enterprises(opts, &mut rng);
    let total_weight: u32 = ACTIONS.iter().map(|(_, w)| w).sum();
    // Scale user rates so the benign total is about `events`.
    let expected: f64 = enterprises
        .iter()
        .flat_map(|e| e.users.iter())
        .map(|u| u.rate)
        .sum::<f64>()
        * 9.0
        * f64::from(opts.days)
        * 5.0
        / 7.0;
    let scale = opts.events as f64 / expected.max(1.0);

    // Attacks, placed on the last days during working hours.
    let mut attacks: Vec<(u64, Label, usize, usize)> = Vec::new();
    for (ei, ent) in enterprises.iter().enumerate() {
        for a in 0..opts.attacks_per_enterprise {
            let day = u64::from(opts.days.saturating_sub(1 + a % 2));
            let hour = (11 - ent.tz).rem_euclid(24) as u64;
            let base = opts.start + day * 86_400 + hour * 3600 + rng.gen_range(0..1800);
            let victim = rng.gen_range(0..ent.users.len());
            let n = rng.gen_range(400..900);
            attacks.push((
                base,
                Label {
                    kind: "mass_download".into(),
                    expected_reason: "excessive_downloads".into(),
                    enterprise: ent.id.clone(),
                    key: ent.users[victim].id.clone(),
                    start: base,
                    end: base + 1800,
                    events: n,
                },
                ei,
                victim,
            ));
            let sharer = rng.gen_range(0..ent.users.len());
            let base2 = base + 2 * 3600;
            let n2 = rng.gen_range(150..300);
            attacks.push((
                base2,
                Label {
                    kind: "mass_public_sharing".into(),
                    expected_reason: "excessive_file_shares".into(),
                    enterprise: ent.id.clone(),
                    key: ent.users[sharer].id.clone(),
                    start: base2,
                    end: base2 + 3000,
                    events: n2,
                },
                ei,
                sharer,
            ));
            let base3 = base + 4 * 3600;
            let ip = format!("185.220.{}.{}", 100 + ei, 10 + a);
            attacks.push((
                base3,
                Label {
                    kind: "credential_testing".into(),
                    expected_reason: "unexpected_credential_testing".into(),
                    enterprise: ent.id.clone(),
                    key: ip,
                    start: base3,
                    end: base3 + 1200,
                    events: rng.gen_range(250..400),
                },
                ei,
                0,
            ));
            // A stolen session cookie: the victim's own session of the day, replayed from
            // another network and browser late in the afternoon.
            let victim = rng.gen_range(0..ent.users.len());
            // 16:30 local, when the victim's session of the (UTC) day is in use.
            let base4 =
                opts.start + day * 86_400 + ((16 - ent.tz).rem_euclid(24) as u64) * 3600 + 1800;
            attacks.push((
                base4,
                Label {
                    kind: "stolen_session".into(),
                    expected_reason: "session_fingerprint".into(),
                    enterprise: ent.id.clone(),
                    key: ent.users[victim].id.clone(),
                    start: base4,
                    end: base4 + 600,
                    events: 15,
                },
                ei,
                victim,
            ));
            // A sign-in through a Tor exit node.
            let rider = rng.gen_range(0..ent.users.len());
            let base5 = base4 + 3600;
            attacks.push((
                base5,
                Label {
                    kind: "tor_access".into(),
                    expected_reason: "tor".into(),
                    enterprise: ent.id.clone(),
                    key: ent.users[rider].id.clone(),
                    start: base5,
                    end: base5 + 300,
                    events: 5,
                },
                ei,
                rider,
            ));
        }
    }
    let tor_ip = |ei: usize| format!("204.8.156.{}", 10 + ei);
    let session_of = |ei: usize, ui: usize, device: u64, day: u64| {
        SESSION_BASE
            + (ei as u64) * 1_000_000
            + (ui as u64) * 100
            + device * 10
            + day * 1_000_000_000
    };

    let mut w = Writer {
        out,
        lines: 0,
        next_id: 0,
        seed: opts.seed,
    };
    // Generate hour by hour so the output is in time order.
    let mut pending: Vec<(u64, usize, usize, usize, u64)> = Vec::new();
    for hour in 0..u64::from(opts.days) * 24 {
        let hour_start = opts.start + hour * 3600;
        pending.clear();
        for (ei, ent) in enterprises.iter().enumerate() {
            let local = (hour as i64 + ent.tz).rem_euclid(24 * 7);
            let local_day = (local / 24 + 3) % 7; // day 0 of the range is a Thursday
            let local_hour = local % 24;
            let weekday = local_day < 5;
            let active = if weekday && (9..18).contains(&local_hour) {
                1.0
            } else if weekday && (7..21).contains(&local_hour) {
                0.15
            } else {
                0.02
            };
            for (ui, user) in ent.users.iter().enumerate() {
                let mean = user.rate * scale * active;
                // Poisson-ish: integer part plus a Bernoulli for the fraction, with jitter.
                let jitter: f64 = rng.gen_range(0.5..1.5);
                let m = mean * jitter;
                let n = m.floor() as u64 + u64::from(rng.gen_bool(m.fract().clamp(0.0, 1.0)));
                let device = rng.gen_range(0..user.devices.len());
                // One session per user, device and day.
                let session = session_of(ei, ui, device as u64, hour / 24);
                for _ in 0..n {
                    let mut pick = rng.gen_range(0..total_weight);
                    let mut action = 0;
                    for (i, (_, weight)) in ACTIONS.iter().enumerate() {
                        let weight = match i {
                            0 => (f64::from(*weight) * ent.download_bias) as u32,
                            2 => (f64::from(*weight) * ent.share_bias) as u32,
                            _ => *weight,
                        };
                        if pick < weight {
                            action = i;
                            break;
                        }
                        pick -= weight.min(pick);
                        action = i;
                    }
                    pending.push((hour_start + rng.gen_range(0..3600), ei, ui, action, session));
                }
            }
        }
        // Attack events falling in this hour.
        type AttackEvent = (u64, String, usize, usize, String, &'static str, u64);
        let mut attack_events: Vec<AttackEvent> = Vec::new();
        for (_, label, ei, ui) in &attacks {
            if label.start >= hour_start + 3600 || label.end < hour_start {
                continue;
            }
            let span = label.end - label.start;
            for i in 0..label.events {
                let t = label.start + i * span / label.events;
                if t < hour_start || t >= hour_start + 3600 {
                    continue;
                }
                let ent = &enterprises[*ei];
                match label.kind.as_str() {
                    "mass_download" | "mass_public_sharing" => {
                        let user = &ent.users[*ui];
                        let action = if label.kind == "mass_download" {
                            "file_downloaded"
                        } else {
                            "file_public_link_created"
                        };
                        attack_events.push((
                            t,
                            action.into(),
                            *ei,
                            *ui,
                            user.devices[0].ip.clone(),
                            user.devices[0].ua,
                            9_000_000_000 + (*ei as u64) * 1000 + *ui as u64,
                        ));
                    }
                    "stolen_session" => {
                        let user = &ent.users[*ui];
                        let ua = if user.devices[0].ua == UAS[5] {
                            UAS[1]
                        } else {
                            UAS[5]
                        };
                        let session = session_of(*ei, *ui, 0, (label.start - opts.start) / 86_400);
                        attack_events.push((
                            t,
                            "file_downloaded".into(),
                            *ei,
                            *ui,
                            format!("45.142.{}.7", *ei),
                            ua,
                            session,
                        ));
                    }
                    "tor_access" => {
                        let user = &ent.users[*ui];
                        attack_events.push((
                            t,
                            "file_downloaded".into(),
                            *ei,
                            *ui,
                            tor_ip(*ei),
                            user.devices[0].ua,
                            9_100_000_000 + (*ei as u64) * 1000 + *ui as u64,
                        ));
                    }
                    _ => {
                        // Credential testing: many users tried from one IP with a script.
                        let victim = (i as usize * 7919) % ent.users.len();
                        attack_events.push((
                            t,
                            "user_login_failed".into(),
                            *ei,
                            victim,
                            label.key.clone(),
                            "python-requests/2.31.0",
                            0,
                        ));
                    }
                }
            }
        }
        pending.sort_unstable();
        attack_events.sort();
        let mut benign = pending.iter().peekable();
        let mut hostile = attack_events.iter().peekable();
        loop {
            let take_benign = match (benign.peek(), hostile.peek()) {
                (Some(b), Some(h)) => b.0 <= h.0,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if take_benign {
                let &(t, ei, ui, action, session) = benign.next().expect("peeked");
                let ent = &enterprises[ei];
                let user = &ent.users[ui];
                let device = &user.devices[((session / 10) % 10) as usize % user.devices.len()];
                w.entry(
                    t,
                    ACTIONS[action].0,
                    ent,
                    user,
                    session,
                    &device.ip,
                    device.ua,
                    false,
                )?;
            } else {
                let (t, action, ei, ui, ip, ua, session) = hostile.next().expect("peeked");
                let ent = &enterprises[*ei];
                let user = &ent.users[*ui];
                w.entry(*t, action, ent, user, *session, ip, ua, true)?;
            }
        }
    }
    let mut labels: Vec<Label> = attacks.into_iter().map(|(_, l, _, _)| l).collect();
    labels.sort_by(|a, b| (a.start, &a.enterprise).cmp(&(b.start, &b.enterprise)));
    let mut tor_exits: Vec<String> = (0..enterprises.len()).map(tor_ip).collect();
    tor_exits.extend((100..120).map(|i| format!("204.8.156.{i}")));
    Ok(Generated {
        lines: w.lines,
        labels,
        tor_exits,
    })
}
