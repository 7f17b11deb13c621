//! Configuration: the TOML file's structs, their documented defaults, validation, and the
//! compilation of rule entries into [`Rule`]s. Every section denies unknown fields, so a typo is
//! an error rather than a silently ignored setting.
//!
//! ```toml
//! [engine]
//! lateness = "5s"         # live: watermark = max(date_create seen) - lateness (DESIGN 3)
//! dedup_horizon = "1d"    # how long an entry id is remembered to drop API re-sends
//!
//! [[rules]]               # overrides the built-in rule of the same reason field by field
//! reason = "excessive_downloads"
//! multiplier = 4.0
//!
//! [[rules]]               # a new rule: `actions` is required
//! reason = "unexpected_scraping"
//! actions = ["file_downloaded", "file_previewed"]
//! ```

use crate::model::decision::{
    AllowList, Exclusion, LoopGuard, Mode, Policies, Policy, LOOP_HORIZON,
};
use crate::model::{Eval, GroupBy, Rule};
use crate::response::config::{NotificationsConfig, ResponseConfig, ResponseConfigError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

/// Errors reading or validating configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("rule {reason}: {message}")]
    Rule { reason: String, message: String },
    #[error("engine: {0}")]
    Engine(String),
    #[error("[{0}]: {1}")]
    Policy(String, String),
    #[error(transparent)]
    Response(#[from] ResponseConfigError),
}

/// The whole configuration file. Every field has a default, so an empty file is valid.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub engine: EngineConfig,
    /// Rule entries, merged by `reason` over the built-in rules (see [`RuleConfig`]).
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// The default decision policy, for every enterprise without its own.
    #[serde(default)]
    pub decisions: PolicyConfig,
    /// Per-enterprise policies (keyed by `context.location.id`), merged over `[decisions]`.
    #[serde(default)]
    pub enterprises: BTreeMap<String, PolicyConfig>,
    #[serde(default)]
    pub detectors: DetectorsConfig,
    /// The response stage: reset backend, retries (see [`ResponseConfig`]).
    #[serde(default)]
    pub response: ResponseConfig,
    /// Notification routing, channels and coalescing (see [`NotificationsConfig`]).
    #[serde(default)]
    pub notifications: NotificationsConfig,
    /// `aer run`: the API, HTTP ingest and tokens.
    #[serde(default)]
    pub service: ServiceConfig,
}

/// `[service]`: the live service (`aer run`). Tokens are read from environment variables.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The API and HTTP ingest address. Default `127.0.0.1:8080`.
    #[serde(default = "default_listen")]
    pub listen: std::net::SocketAddr,
    /// The job store. Default `aer.db`.
    #[serde(default = "default_db")]
    pub db: std::path::PathBuf,
    /// The variable holding the admin token (reads and changes everything). Default
    /// `AER_ADMIN_TOKEN`; unset, admin endpoints refuse every request.
    #[serde(default = "default_admin_token_env")]
    pub admin_token_env: String,
    /// The variable holding a token that may only post events (optional).
    pub ingest_token_env: Option<String>,
    /// Per-enterprise read tokens: enterprise id -> variable holding its token.
    #[serde(default)]
    pub read_token_env: BTreeMap<String, String>,
    /// Ingest queue capacity in batches (one request or up to 4,096 lines each). Default 256;
    /// when full, HTTP ingest answers 503 with Retry-After and readers wait.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Largest HTTP request body in bytes. Default 10 MiB.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Without input for this long, the watermark moves to the newest event. Default 5 s.
    #[serde(with = "humantime_serde_compat", default = "default_idle_flush")]
    pub idle_flush: Duration,
    /// Read events from standard input (also `aer run --stdin`). Default false.
    #[serde(default)]
    pub stdin: bool,
    /// Files to follow (`aer run --follow` adds to these).
    #[serde(default)]
    pub follow: Vec<std::path::PathBuf>,
    /// The Slack Audit Logs API poller; off unless the section is present.
    pub slack_audit: Option<crate::io::slack_audit::SlackAuditConfig>,
}

fn default_listen() -> std::net::SocketAddr {
    ([127, 0, 0, 1], 8080).into()
}
fn default_db() -> std::path::PathBuf {
    "aer.db".into()
}
fn default_admin_token_env() -> String {
    "AER_ADMIN_TOKEN".into()
}
fn default_queue() -> usize {
    256
}
fn default_max_body() -> usize {
    10 << 20
}
fn default_idle_flush() -> Duration {
    Duration::from_secs(5)
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            listen: default_listen(),
            db: default_db(),
            admin_token_env: default_admin_token_env(),
            ingest_token_env: None,
            read_token_env: BTreeMap::new(),
            queue: default_queue(),
            max_body_bytes: default_max_body(),
            idle_flush: default_idle_flush(),
            stdin: false,
            follow: Vec::new(),
            slack_audit: None,
        }
    }
}

/// `[detectors]`: the heuristic detectors (DESIGN 4.2) and the tables they use.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorsConfig {
    /// History H: first-seen sets, sessions and flags expire after this much inactivity.
    /// Default 14 d.
    #[serde(with = "humantime_serde_compat", default = "default_detector_history")]
    pub history: Duration,
    /// Events a user needs within H before a new client family, ASN or /16 is unexpected.
    /// Default 50.
    #[serde(default = "default_min_history")]
    pub min_history: u64,
    /// An ip2asn TSV table (range start, range end, AS number, country, description). Without
    /// one, the `asn` detector is off and fingerprints use the /24 (/64) prefix.
    pub asn_table: Option<std::path::PathBuf>,
    /// A Tor exit-node list: one IP per line, `#` comments. Without one, `tor` is off.
    pub tor_exit_list: Option<std::path::PathBuf>,
    /// User-agent substrings (case-insensitive) of scripted clients.
    #[serde(default = "default_scripted_clients")]
    pub scripted_clients: Vec<String>,
    /// Detectors to turn off, by reason (for example `["ip_address"]`).
    #[serde(default)]
    pub disabled: BTreeSet<String>,
}

fn default_detector_history() -> Duration {
    Duration::from_secs(14 * 86_400)
}
fn default_min_history() -> u64 {
    50
}
/// The built-in scripted clients.
pub fn default_scripted_clients() -> Vec<String> {
    [
        "curl/",
        "python-requests/",
        "python-urllib/",
        "go-http-client/",
        "wget/",
        "okhttp/",
        "aiohttp/",
        "postmanruntime/",
        "axios/",
        "node-fetch/",
        "libwww-perl/",
        "httpie/",
        "java/",
        "apache-httpclient/",
        "powershell/",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

impl Default for DetectorsConfig {
    fn default() -> Self {
        DetectorsConfig {
            history: default_detector_history(),
            min_history: default_min_history(),
            asn_table: None,
            tor_exit_list: None,
            scripted_clients: default_scripted_clients(),
            disabled: BTreeSet::new(),
        }
    }
}

/// `[decisions]` and `[enterprises.<id>]`: a decision policy (DESIGN 5). In an enterprise's
/// section, `modes` and `groups` are merged by key over the default's; `exclusions` and `loop`
/// replace the default's when given.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Mode per reason: "off", "monitor" or "respond". Unlisted reasons: `tor` and
    /// `unexpected_scraping` respond, everything else monitors (Slack's defaults).
    #[serde(default)]
    pub modes: BTreeMap<String, Mode>,
    /// Named groups of user ids, for exclusions.
    #[serde(default)]
    pub groups: BTreeMap<String, BTreeSet<String>>,
    /// `{users = [...], groups = [...], reasons = [...]}`; no reasons means all reasons.
    pub exclusions: Option<Vec<Exclusion>>,
    #[serde(rename = "loop")]
    pub loop_guard: Option<LoopConfig>,
    /// Trusted networks: `{cidrs = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"], asns = [64500]}`.
    /// Events from them never produce anomalies and never enter baselines.
    pub allow: Option<AllowConfig>,
}

/// `allow`: trusted CIDRs (a bare address is a /32 or /128) and AS numbers.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AllowConfig {
    #[serde(default)]
    pub cidrs: Vec<String>,
    #[serde(default)]
    pub asns: Vec<u32>,
}

impl AllowConfig {
    fn compile(&self) -> Result<AllowList, String> {
        let mut list = AllowList::default();
        for text in &self.cidrs {
            let net = text
                .parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| format!("allow.cidrs: {text:?} is not a CIDR or an IP address"))?;
            list.cidrs.insert(net.trunc());
        }
        list.asns.extend(self.asns.iter().copied());
        Ok(list)
    }
}

/// `loop`: the loop guard. Defaults: window 24h, cooldown 15m, max_resets 3; window and
/// cooldown at most 7 days.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoopConfig {
    #[serde(default, with = "humantime_serde_compat::option")]
    pub window: Option<Duration>,
    #[serde(default, with = "humantime_serde_compat::option")]
    pub cooldown: Option<Duration>,
    pub max_resets: Option<u64>,
}

impl PolicyConfig {
    fn apply(&self, mut policy: Policy) -> Result<Policy, String> {
        policy.modes.extend(self.modes.clone());
        policy.groups.extend(self.groups.clone());
        if let Some(ex) = &self.exclusions {
            policy.exclusions = ex.clone();
        }
        if let Some(allow) = &self.allow {
            policy.allow = allow.compile()?;
        }
        for ex in &policy.exclusions {
            if let Some(g) = ex.groups.iter().find(|g| !policy.groups.contains_key(*g)) {
                return Err(format!("exclusion names unknown group {g:?}"));
            }
        }
        if let Some(l) = &self.loop_guard {
            if let Some(w) = l.window {
                policy.loop_guard.window = whole_seconds(w, "loop.window")?;
            }
            if let Some(c) = l.cooldown {
                policy.loop_guard.cooldown = whole_seconds(c, "loop.cooldown")?;
            }
            if let Some(m) = l.max_resets {
                policy.loop_guard.max_resets = m;
            }
        }
        let LoopGuard {
            window, cooldown, ..
        } = policy.loop_guard;
        if window > LOOP_HORIZON || cooldown > LOOP_HORIZON {
            return Err("loop.window and loop.cooldown must be at most 7d".into());
        }
        Ok(policy)
    }
}

/// `[engine]`: how the dataflow is clocked.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// How far behind the newest `date_create` the watermark trails in live mode (`aer run`).
    /// Default 5 s. A replay sorts its whole input first, so nothing is late there and this is
    /// not used.
    #[serde(with = "humantime_serde_compat", default = "default_lateness")]
    pub lateness: Duration,
    /// How long an entry id is remembered, in event time, to drop the API's re-sends. Default 1 d.
    #[serde(with = "humantime_serde_compat", default = "default_dedup_horizon")]
    pub dedup_horizon: Duration,
    /// A session idle this long is forgotten: seen again, it counts as first seen then.
    /// Default 14 d.
    #[serde(with = "humantime_serde_compat", default = "default_session_expiry")]
    pub session_expiry: Duration,
}

fn default_session_expiry() -> Duration {
    Duration::from_secs(14 * 86_400)
}

fn default_lateness() -> Duration {
    Duration::from_secs(5)
}
fn default_dedup_horizon() -> Duration {
    Duration::from_secs(86_400)
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            lateness: default_lateness(),
            dedup_horizon: default_dedup_horizon(),
            session_expiry: default_session_expiry(),
        }
    }
}

/// One `[[rules]]` entry. For a built-in reason, every omitted field keeps the built-in value;
/// for a new reason, `actions` is required and the other fields take the generic defaults
/// (window 1h, history 14d, quantile 0.99, multiplier 3.0, floor 0, min_samples 50,
/// default_threshold 200, group_by user).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// The anomaly reason, which names the rule.
    pub reason: String,
    /// `false` removes the rule (built-in or not). Default true.
    pub enabled: Option<bool>,
    /// Slack audit actions counted by the rule.
    pub actions: Option<Vec<String>>,
    /// Window W, for example "1h"; also the width of baseline buckets.
    #[serde(default, with = "humantime_serde_compat::option")]
    pub window: Option<Duration>,
    /// History H over which baselines are learnt, for example "14d".
    #[serde(default, with = "humantime_serde_compat::option")]
    pub history: Option<Duration>,
    /// q in (0, 1]: the nearest-rank quantile of the baseline samples.
    pub quantile: Option<f64>,
    /// m > 0: the threshold is m x Q_q(B).
    pub multiplier: Option<f64>,
    /// f: the lowest dynamic threshold.
    pub floor: Option<u64>,
    /// s: baseline samples needed before the dynamic threshold applies.
    pub min_samples: Option<u64>,
    /// d: the threshold while the baseline is too small.
    pub default_threshold: Option<u64>,
    /// "user" (default), "ip" or "session".
    pub group_by: Option<GroupBy>,
}

const HOUR: u64 = 3600;
const DAY: u64 = 86_400;

/// The built-in rules of DESIGN 4.1.
pub fn default_rules() -> Vec<Rule> {
    let eval = |floor| Eval {
        quantile_ppm: 990_000,
        multiplier_milli: 3000,
        floor,
        min_samples: 50,
        default_threshold: 200,
    };
    let rule = |reason: &str, actions: &[&str], floor, group_by| Rule {
        reason: reason.to_string(),
        actions: actions.iter().map(|a| a.to_string()).collect(),
        window: HOUR,
        history: 14 * DAY,
        group_by,
        eval: eval(floor),
    };
    vec![
        rule(
            "excessive_downloads",
            &["file_downloaded"],
            50,
            GroupBy::User,
        ),
        rule(
            "excessive_file_shares",
            &["file_shared", "file_public_link_created"],
            30,
            GroupBy::User,
        ),
        rule(
            "unexpected_credential_testing",
            &["user_login_failed"],
            20,
            GroupBy::Ip,
        ),
        rule("unexpected_api_call_volume", &[], 0, GroupBy::User),
        rule("unexpected_scraping", &[], 0, GroupBy::User),
    ]
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source: Box::new(source),
        })?;
        config.rules()?;
        config.policies()?;
        config.response.validate()?;
        config.notifications.routing()?;
        Ok(config)
    }

    /// The decision policies: `[decisions]` over the built-in defaults, and each
    /// `[enterprises.<id>]` over that.
    pub fn policies(&self) -> Result<Policies, ConfigError> {
        let default = self
            .decisions
            .apply(Policy::default())
            .map_err(|m| ConfigError::Policy("decisions".into(), m))?;
        let mut enterprises = BTreeMap::new();
        for (id, section) in &self.enterprises {
            let policy = section
                .apply(default.clone())
                .map_err(|m| ConfigError::Policy(format!("enterprises.{id}"), m))?;
            enterprises.insert(id.clone(), policy);
        }
        Ok(Policies {
            default,
            enterprises,
        })
    }

    /// The rule set: built-in rules with the file's entries merged over them by reason.
    pub fn rules(&self) -> Result<Vec<Rule>, ConfigError> {
        let mut rules: BTreeMap<String, Rule> = default_rules()
            .into_iter()
            .map(|r| (r.reason.clone(), r))
            .collect();
        let mut seen = BTreeSet::new();
        for entry in &self.rules {
            let err = |message: String| ConfigError::Rule {
                reason: entry.reason.clone(),
                message,
            };
            if entry.reason.trim().is_empty() {
                return Err(err("reason must not be empty".into()));
            }
            if !seen.insert(entry.reason.clone()) {
                return Err(err("listed twice".into()));
            }
            if entry.enabled == Some(false) {
                rules.remove(&entry.reason);
                continue;
            }
            let base = match rules.get(&entry.reason) {
                Some(rule) => rule.clone(),
                None => {
                    if entry.actions.is_none() {
                        return Err(err("a new rule needs `actions`".into()));
                    }
                    Rule {
                        reason: entry.reason.clone(),
                        actions: BTreeSet::new(),
                        window: HOUR,
                        history: 14 * DAY,
                        group_by: GroupBy::User,
                        eval: Eval {
                            quantile_ppm: 990_000,
                            multiplier_milli: 3000,
                            floor: 0,
                            min_samples: 50,
                            default_threshold: 200,
                        },
                    }
                }
            };
            rules.insert(entry.reason.clone(), entry.apply(base).map_err(err)?);
        }
        Ok(rules.into_values().collect())
    }
}

impl RuleConfig {
    fn apply(&self, mut rule: Rule) -> Result<Rule, String> {
        if let Some(actions) = &self.actions {
            rule.actions = actions.iter().cloned().collect();
        }
        if let Some(w) = self.window {
            rule.window = whole_seconds(w, "window")?;
        }
        if let Some(h) = self.history {
            rule.history = whole_seconds(h, "history")?;
        }
        if rule.window == 0 {
            return Err("window must be at least 1s".into());
        }
        if rule.history < rule.window {
            return Err("history must be at least one window".into());
        }
        if let Some(q) = self.quantile {
            if !(q > 0.0 && q <= 1.0) {
                return Err(format!("quantile must be in (0, 1], got {q}"));
            }
            rule.eval.quantile_ppm = (q * 1_000_000.0).round() as u32;
        }
        if let Some(m) = self.multiplier {
            if !(m > 0.0 && m <= 1_000_000.0) {
                return Err(format!("multiplier must be in (0, 1e6], got {m}"));
            }
            rule.eval.multiplier_milli = (m * 1000.0).round() as u64;
        }
        if let Some(f) = self.floor {
            rule.eval.floor = f;
        }
        if let Some(s) = self.min_samples {
            rule.eval.min_samples = s;
        }
        if let Some(d) = self.default_threshold {
            rule.eval.default_threshold = d;
        }
        if let Some(g) = self.group_by {
            rule.group_by = g;
        }
        Ok(rule)
    }
}

fn whole_seconds(d: Duration, what: &str) -> Result<u64, String> {
    if d.subsec_nanos() != 0 {
        return Err(format!("{what} must be whole seconds"));
    }
    Ok(d.as_secs())
}

/// Durations in TOML as humantime strings ("90s", "1h", "14d") or integer seconds.
pub(crate) mod humantime_serde_compat {
    use serde::{de, Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }

    fn convert<E: de::Error>(raw: Raw) -> Result<Duration, E> {
        match raw {
            Raw::Secs(s) => Ok(Duration::from_secs(s)),
            Raw::Text(t) => humantime::parse_duration(&t)
                .map_err(|e| E::custom(format!("bad duration {t:?}: {e}"))),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        convert(Raw::deserialize(d)?)
    }

    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*v).to_string())
    }

    pub mod option {
        use super::*;
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            Option::<Raw>::deserialize(d)?.map(convert).transpose()
        }
        pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(v) => super::serialize(v, s),
                None => s.serialize_none(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_gives_the_builtin_rules() {
        let c: Config = toml::from_str("").unwrap();
        let rules = c.rules().unwrap();
        assert_eq!(rules.len(), 5);
        let dl = rules
            .iter()
            .find(|r| r.reason == "excessive_downloads")
            .unwrap();
        assert_eq!(dl.window, 3600);
        assert_eq!(dl.history, 14 * 86_400);
        assert_eq!(dl.eval.floor, 50);
        assert_eq!(dl.eval.quantile_ppm, 990_000);
        let cred = rules
            .iter()
            .find(|r| r.reason == "unexpected_credential_testing")
            .unwrap();
        assert_eq!(cred.group_by, GroupBy::Ip);
    }

    #[test]
    fn entries_merge_over_builtins_and_add_rules() {
        let c: Config = toml::from_str(
            r#"
            [engine]
            lateness = "5s"
            [[rules]]
            reason = "excessive_downloads"
            multiplier = 2.5
            window = "30m"
            [[rules]]
            reason = "unexpected_api_call_volume"
            enabled = false
            [[rules]]
            reason = "mass_channel_export"
            actions = ["channel_exported"]
            history = 604800
            "#,
        )
        .unwrap();
        assert_eq!(c.engine.lateness, Duration::from_secs(5));
        let rules = c.rules().unwrap();
        let dl = rules
            .iter()
            .find(|r| r.reason == "excessive_downloads")
            .unwrap();
        assert_eq!(dl.eval.multiplier_milli, 2500);
        assert_eq!(dl.window, 1800);
        assert_eq!(dl.eval.floor, 50, "unset fields keep the built-in value");
        assert!(!rules
            .iter()
            .any(|r| r.reason == "unexpected_api_call_volume"));
        let new = rules
            .iter()
            .find(|r| r.reason == "mass_channel_export")
            .unwrap();
        assert_eq!(new.history, 7 * 86_400);
        assert_eq!(new.eval.default_threshold, 200);
    }

    #[test]
    fn policies_default_to_slack_modes_and_merge_per_enterprise() {
        use crate::model::decision::Mode;
        let c: Config = toml::from_str(
            r#"
            [decisions]
            modes = { excessive_downloads = "respond" }
            groups = { security = ["W9"] }
            exclusions = [{ groups = ["security"] }]
            [decisions.loop]
            max_resets = 2
            [enterprises.E1]
            modes = { tor = "off" }
            [enterprises.E1.loop]
            cooldown = "5m"
            "#,
        )
        .unwrap();
        let p = c.policies().unwrap();
        assert_eq!(p.default.mode("excessive_downloads"), Mode::Respond);
        assert_eq!(p.default.mode("tor"), Mode::Respond);
        assert_eq!(p.default.mode("asn"), Mode::Monitor);
        assert_eq!(p.default.loop_guard.max_resets, 2);
        assert_eq!(p.default.loop_guard.window, 86_400);
        let e1 = p.for_enterprise("E1");
        assert_eq!(e1.mode("tor"), Mode::Off);
        assert_eq!(e1.mode("excessive_downloads"), Mode::Respond);
        assert_eq!(e1.loop_guard.cooldown, 300);
        assert_eq!(
            e1.excluded_by("W9", "tor").as_deref(),
            Some("group:security")
        );
        assert_eq!(p.for_enterprise("E2"), &p.default);
        let bad: Config =
            toml::from_str("[decisions]\nexclusions = [{ groups = [\"nobody\"] }]").unwrap();
        assert!(bad
            .policies()
            .unwrap_err()
            .to_string()
            .contains("unknown group"));
        let long: Config = toml::from_str("[decisions.loop]\nwindow = \"30d\"").unwrap();
        assert!(long
            .policies()
            .unwrap_err()
            .to_string()
            .contains("at most 7d"));
        assert!(toml::from_str::<Config>("[decisions]\nmodes = { tor = \"kill\" }").is_err());
        let allow: Config = toml::from_str(
            "[enterprises.E1.allow]\ncidrs = [\"10.1.2.3/8\", \"192.0.2.7\", \"2001:db8::/32\"]\nasns = [64500]",
        )
        .unwrap();
        let p = allow.policies().unwrap();
        let e1 = &p.for_enterprise("E1").allow;
        assert!(e1.allows(Some("10.200.0.1"), None));
        assert!(e1.allows(Some("192.0.2.7"), None));
        assert!(!e1.allows(Some("192.0.2.8"), None));
        assert!(e1.allows(Some("2001:db8::1"), None));
        assert!(e1.allows(Some("8.8.8.8"), Some(64500)));
        assert!(!e1.allows(None, None));
        assert!(!p.default.allow.allows(Some("10.200.0.1"), None));
        let bad: Config = toml::from_str("[decisions.allow]\ncidrs = [\"10.0.0.0/33\"]").unwrap();
        assert!(bad
            .policies()
            .unwrap_err()
            .to_string()
            .contains("not a CIDR"));
    }

    #[test]
    fn bad_configs_are_clear_errors() {
        let unknown = toml::from_str::<Config>("[engine]\nlatenes = \"5s\"");
        assert!(unknown.unwrap_err().to_string().contains("unknown field"));
        let c: Config = toml::from_str("[[rules]]\nreason = \"x\"\n").unwrap();
        assert!(c
            .rules()
            .unwrap_err()
            .to_string()
            .contains("needs `actions`"));
        let c: Config =
            toml::from_str("[[rules]]\nreason = \"excessive_downloads\"\nquantile = 1.5\n")
                .unwrap();
        assert!(c.rules().unwrap_err().to_string().contains("quantile"));
        let c: Config = toml::from_str(
            "[[rules]]\nreason = \"excessive_downloads\"\nwindow = \"2h\"\nhistory = \"1h\"\n",
        )
        .unwrap();
        assert!(c.rules().unwrap_err().to_string().contains("history"));
        let bad = toml::from_str::<Config>("[engine]\nlateness = \"soon\"");
        assert!(bad.unwrap_err().to_string().contains("bad duration"));
    }
}
