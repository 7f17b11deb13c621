//! `[response]` and `[notifications]`: the response stage's configuration structs with their
//! documented defaults, validation, and the construction of the reset backend, the retry policy,
//! the notification routing and the channels. Secrets (the Slack token, webhook URLs, SMTP
//! passwords) are read from environment variables named here, never from the file.
//!
//! ```toml
//! [response]
//! backend = "slack"              # "log" (default) records resets without making them
//! drain_timeout = "30s"          # replay: how long to wait for retries before leaving jobs pending
//! [response.slack]
//! base_url = "https://slack.com" # default
//! token_env = "AER_SLACK_TOKEN"  # default; per enterprise: [response.slack.enterprise_token_env]
//! [response.retry]
//! base = "1s"                    # attempt n waits base * 2^(n-1), capped at max, +-jitter
//! max = "5m"
//! jitter = 0.2
//! max_attempts = 8               # then the job is a dead letter
//!
//! [notifications]
//! group_interval = "5m"          # later alerts to a recipient within this wait for one digest
//! repeat_interval = "4h"         # the same (user, reason) is not repeated to a recipient within
//! [notifications.channels.secops]
//! kind = "webhook"
//! url_env = "AER_SECOPS_WEBHOOK"
//! [notifications.routes.security_admins]
//! channel = "secops"
//! addresses = ["#secops"]
//! [notifications.enterprises.E0123.org_primary_owner]
//! channel = "secops"
//! addresses = ["#e0123-owner"]
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::channel::{Channel, Channels, EmailChannel, EmailSettings, SmtpTls, WebhookChannel};
use super::notify::{Role, Route, Routing};
use super::reset::{Backend, LogBackend, SlackBackend};
use super::RetryPolicy;
use crate::config::humantime_serde_compat;
use crate::model::decision::Outcome;

/// A response-stage configuration error, naming the section at fault.
#[derive(Debug, thiserror::Error)]
#[error("[{section}]: {message}")]
pub struct ResponseConfigError {
    pub section: String,
    pub message: String,
}

fn err(section: impl Into<String>, message: impl Into<String>) -> ResponseConfigError {
    ResponseConfigError {
        section: section.into(),
        message: message.into(),
    }
}

/// The reset backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Records the reset in the log and the store; resets nothing (default).
    #[default]
    Log,
    /// Calls Slack's `admin.users.session.reset`.
    Slack,
}

/// `[response]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseConfig {
    /// `log` (default) or `slack`.
    #[serde(default)]
    pub backend: BackendKind,
    /// How long `aer replay` keeps running jobs that wait for a retry; later ones stay pending in
    /// the store and run at the next start. Default 30 s.
    #[serde(with = "humantime_serde_compat", default = "default_drain_timeout")]
    pub drain_timeout: Duration,
    #[serde(default)]
    pub slack: SlackConfig,
    #[serde(default)]
    pub retry: RetryConfig,
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Default for ResponseConfig {
    fn default() -> Self {
        ResponseConfig {
            backend: BackendKind::Log,
            drain_timeout: default_drain_timeout(),
            slack: SlackConfig::default(),
            retry: RetryConfig::default(),
        }
    }
}

/// `[response.slack]`: the `slack` reset backend.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// Default `https://slack.com`.
    #[serde(default = "default_slack_base")]
    pub base_url: String,
    /// The environment variable holding the bearer token (an Org-level admin token with
    /// `admin.users:write`). Default `AER_SLACK_TOKEN`.
    #[serde(default = "default_token_env")]
    pub token_env: String,
    /// Per-enterprise token variables, for an engine watching several organisations.
    #[serde(default)]
    pub enterprise_token_env: BTreeMap<String, String>,
    /// Per-call timeout. Default 10 s.
    #[serde(with = "humantime_serde_compat", default = "default_call_timeout")]
    pub timeout: Duration,
}

fn default_slack_base() -> String {
    "https://slack.com".into()
}
fn default_token_env() -> String {
    "AER_SLACK_TOKEN".into()
}
fn default_call_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Default for SlackConfig {
    fn default() -> Self {
        SlackConfig {
            base_url: default_slack_base(),
            token_env: default_token_env(),
            enterprise_token_env: BTreeMap::new(),
            timeout: default_call_timeout(),
        }
    }
}

/// `[response.retry]`: exponential backoff with jitter, then the dead letters.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// The first retry's delay. Default 1 s.
    #[serde(with = "humantime_serde_compat", default = "default_retry_base")]
    pub base: Duration,
    /// The longest delay. Default 5 min.
    #[serde(with = "humantime_serde_compat", default = "default_retry_max")]
    pub max: Duration,
    /// Each delay is multiplied by a random factor in [1 - jitter, 1 + jitter]. Default 0.2.
    #[serde(default = "default_jitter")]
    pub jitter: f64,
    /// Attempts before a job is dead. Default 8.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

fn default_retry_base() -> Duration {
    Duration::from_secs(1)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(300)
}
fn default_jitter() -> f64 {
    0.2
}
fn default_max_attempts() -> u32 {
    8
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            base: default_retry_base(),
            max: default_retry_max(),
            jitter: default_jitter(),
            max_attempts: default_max_attempts(),
        }
    }
}

impl ResponseConfig {
    /// Checks what can be checked without the environment.
    pub fn validate(&self) -> Result<(), ResponseConfigError> {
        self.retry_policy()?;
        if self.backend == BackendKind::Slack {
            reqwest::Url::parse(&self.slack.base_url)
                .map_err(|e| err("response.slack", format!("base_url: {e}")))?;
        }
        Ok(())
    }

    pub fn retry_policy(&self) -> Result<RetryPolicy, ResponseConfigError> {
        let r = &self.retry;
        if !(0.0..1.0).contains(&r.jitter) {
            return Err(err("response.retry", "jitter must be in [0, 1)"));
        }
        if r.max_attempts == 0 {
            return Err(err("response.retry", "max_attempts must be at least 1"));
        }
        if r.base.is_zero() || r.max < r.base {
            return Err(err("response.retry", "need 0 < base <= max"));
        }
        Ok(RetryPolicy {
            base_ms: r.base.as_millis() as i64,
            max_ms: r.max.as_millis() as i64,
            jitter: r.jitter,
            max_attempts: r.max_attempts,
        })
    }

    /// The reset backend; `slack` reads its tokens from the environment now.
    pub fn backend(&self) -> Result<Backend, ResponseConfigError> {
        match self.backend {
            BackendKind::Log => Ok(Backend::Log(LogBackend::default())),
            BackendKind::Slack => {
                let s = &self.slack;
                let default_token = std::env::var(&s.token_env).ok();
                let mut tokens = BTreeMap::new();
                for (enterprise, var) in &s.enterprise_token_env {
                    let token = std::env::var(var).map_err(|_| {
                        err(
                            "response.slack",
                            format!(
                                "enterprise {enterprise}: environment variable {var} is not set"
                            ),
                        )
                    })?;
                    tokens.insert(enterprise.clone(), token);
                }
                if default_token.is_none() && tokens.is_empty() {
                    return Err(err(
                        "response.slack",
                        format!("backend = \"slack\" needs a token: set {}", s.token_env),
                    ));
                }
                let backend = SlackBackend::new(&s.base_url, default_token, tokens, s.timeout)
                    .map_err(|e| err("response.slack", e.to_string()))?;
                Ok(Backend::Slack(backend))
            }
        }
    }
}

/// The channel kinds of `[notifications.channels.<name>]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    Webhook,
    Email,
}

/// `[notifications.channels.<name>]`: a named channel. `log` is built in and needs no entry.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    pub kind: ChannelKind,
    /// webhook: the environment variable holding the incoming-webhook URL (it is a secret).
    pub url_env: Option<String>,
    /// webhook: the URL itself, for a local relay; prefer `url_env`.
    pub url: Option<String>,
    /// email: the SMTP host.
    pub host: Option<String>,
    /// email: the port. Default 587 (starttls), 465 (tls) or 25 (none).
    pub port: Option<u16>,
    /// email: `starttls` (default), `tls` or `none` (a local relay only).
    pub tls: Option<SmtpTls>,
    /// email: the From address.
    pub from: Option<String>,
    /// email: environment variables holding the SMTP user name and password.
    pub username_env: Option<String>,
    pub password_env: Option<String>,
    /// Per-call timeout. Default 10 s.
    #[serde(with = "humantime_serde_compat::option", default)]
    pub timeout: Option<Duration>,
}

/// A route's settings; in an enterprise's section each role given is merged over the default's.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A channel name (`log` or one of `[notifications.channels]`).
    pub channel: Option<String>,
    /// Recipients' addresses (e-mail addresses, Slack channels, names); not for `user`, whose
    /// address is the user's id.
    pub addresses: Option<Vec<String>>,
    /// The decision outcomes that notify this role; `[]` turns it off.
    pub on: Option<Vec<Outcome>>,
}

/// The routes of the three roles.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesConfig {
    /// The affected user. Default: `log`, on reset and reset_persisting.
    pub user: Option<RouteConfig>,
    /// Default: `log` to `org-primary-owner`, on reset_persisting and loop_suppressed.
    pub org_primary_owner: Option<RouteConfig>,
    /// Default: `log` to `security-admins`, on reset, reset_persisting, loop_suppressed and
    /// monitored.
    pub security_admins: Option<RouteConfig>,
}

/// `[notifications]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationsConfig {
    /// Default 5 min.
    #[serde(with = "humantime_serde_compat", default = "default_group_interval")]
    pub group_interval: Duration,
    /// Default 4 h.
    #[serde(with = "humantime_serde_compat", default = "default_repeat_interval")]
    pub repeat_interval: Duration,
    #[serde(default)]
    pub channels: BTreeMap<String, ChannelConfig>,
    /// The routes of every enterprise without its own.
    #[serde(default)]
    pub routes: RoutesConfig,
    /// Per-enterprise routes, merged role by role over `routes`.
    #[serde(default)]
    pub enterprises: BTreeMap<String, RoutesConfig>,
}

fn default_group_interval() -> Duration {
    Duration::from_secs(300)
}
fn default_repeat_interval() -> Duration {
    Duration::from_secs(4 * 3600)
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        NotificationsConfig {
            group_interval: default_group_interval(),
            repeat_interval: default_repeat_interval(),
            channels: BTreeMap::new(),
            routes: RoutesConfig::default(),
            enterprises: BTreeMap::new(),
        }
    }
}

/// The built-in route of a role.
fn builtin_route(role: Role) -> Route {
    use Outcome::*;
    let (addresses, on): (&[&str], &[Outcome]) = match role {
        Role::User => (&[], &[Reset, ResetPersisting]),
        Role::OrgPrimaryOwner => (&["org-primary-owner"], &[ResetPersisting, LoopSuppressed]),
        Role::SecurityAdmin => (
            &["security-admins"],
            &[Reset, ResetPersisting, LoopSuppressed, Monitored],
        ),
    };
    Route {
        role,
        channel: "log".into(),
        addresses: addresses.iter().map(|s| s.to_string()).collect(),
        on: on.iter().copied().collect(),
    }
}

impl RouteConfig {
    fn apply(&self, mut route: Route) -> Route {
        if let Some(channel) = &self.channel {
            route.channel = channel.clone();
        }
        if let Some(addresses) = &self.addresses {
            route.addresses = addresses.clone();
        }
        if let Some(on) = &self.on {
            route.on = on.iter().copied().collect();
        }
        route
    }
}

impl RoutesConfig {
    fn apply(&self, base: &[Route]) -> Vec<Route> {
        base.iter()
            .map(|route| {
                let over = match route.role {
                    Role::User => &self.user,
                    Role::OrgPrimaryOwner => &self.org_primary_owner,
                    Role::SecurityAdmin => &self.security_admins,
                };
                match over {
                    Some(over) => over.apply(route.clone()),
                    None => route.clone(),
                }
            })
            .collect()
    }
}

impl NotificationsConfig {
    /// The coalescer's intervals in seconds of event time.
    pub fn intervals(&self) -> Result<(u64, u64), ResponseConfigError> {
        let g = self.group_interval.as_secs();
        let r = self.repeat_interval.as_secs();
        if g == 0 {
            return Err(err("notifications", "group_interval must be at least 1s"));
        }
        Ok((g, r))
    }

    /// The routing of every enterprise, validated against the channels.
    pub fn routing(&self) -> Result<Routing, ResponseConfigError> {
        self.intervals()?;
        let builtin: Vec<Route> = [Role::User, Role::OrgPrimaryOwner, Role::SecurityAdmin]
            .into_iter()
            .map(builtin_route)
            .collect();
        let default = self.routes.apply(&builtin);
        self.check_routes("notifications.routes", &default)?;
        let mut enterprises = BTreeMap::new();
        for (id, section) in &self.enterprises {
            let routes = section.apply(&default);
            self.check_routes(&format!("notifications.enterprises.{id}"), &routes)?;
            enterprises.insert(id.clone(), routes);
        }
        for (name, channel) in &self.channels {
            self.check_channel(name, channel)?;
        }
        Ok(Routing {
            default,
            enterprises,
        })
    }

    fn check_routes(&self, section: &str, routes: &[Route]) -> Result<(), ResponseConfigError> {
        for route in routes {
            let role = match route.role {
                Role::User => "user",
                Role::OrgPrimaryOwner => "org_primary_owner",
                Role::SecurityAdmin => "security_admins",
            };
            let section = format!("{section}.{role}");
            let kind = match route.channel.as_str() {
                "log" => None,
                name => match self.channels.get(name) {
                    Some(c) => Some(c.kind),
                    None => {
                        return Err(err(
                            section,
                            format!(
                            "unknown channel {name:?} (log, or one of [notifications.channels])"
                        ),
                        ))
                    }
                },
            };
            match route.role {
                Role::User => {
                    if !route.addresses.is_empty() {
                        return Err(err(
                            section,
                            "the user is addressed by user id: no `addresses`",
                        ));
                    }
                    if kind == Some(ChannelKind::Email) && !route.on.is_empty() {
                        return Err(err(
                            section,
                            "audit logs carry user ids, not mail addresses: route the user over log or a webhook",
                        ));
                    }
                }
                _ => {
                    if !route.on.is_empty() && route.addresses.is_empty() {
                        return Err(err(section, "`addresses` is empty: nobody would be told"));
                    }
                    if kind == Some(ChannelKind::Email) {
                        for address in &route.addresses {
                            address.parse::<lettre::message::Mailbox>().map_err(|e| {
                                err(section.clone(), format!("address {address:?}: {e}"))
                            })?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn check_channel(&self, name: &str, c: &ChannelConfig) -> Result<(), ResponseConfigError> {
        let section = format!("notifications.channels.{name}");
        if name == "log" {
            return Err(err(section, "`log` is built in; choose another name"));
        }
        let webhook = [("url_env", c.url_env.is_some()), ("url", c.url.is_some())];
        let email = [
            ("host", c.host.is_some()),
            ("port", c.port.is_some()),
            ("tls", c.tls.is_some()),
            ("from", c.from.is_some()),
            ("username_env", c.username_env.is_some()),
            ("password_env", c.password_env.is_some()),
        ];
        let (other, kind) = match c.kind {
            ChannelKind::Webhook => (&email[..], "webhook"),
            ChannelKind::Email => (&webhook[..], "email"),
        };
        if let Some((field, _)) = other.iter().find(|(_, set)| *set) {
            return Err(err(
                section,
                format!("`{field}` does not apply to a {kind} channel"),
            ));
        }
        match c.kind {
            ChannelKind::Webhook => {
                if c.url.is_some() == c.url_env.is_some() {
                    return Err(err(
                        section,
                        "a webhook needs exactly one of `url` and `url_env`",
                    ));
                }
            }
            ChannelKind::Email => {
                if c.host.is_none() || c.from.is_none() {
                    return Err(err(section, "an email channel needs `host` and `from`"));
                }
                if c.username_env.is_some() != c.password_env.is_some() {
                    return Err(err(
                        section,
                        "give both `username_env` and `password_env`, or neither",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The channels, built now (secrets read from the environment).
    pub fn channels(&self) -> Result<Channels, ResponseConfigError> {
        let mut channels = Channels::default();
        let env = |section: &str, var: &str| {
            std::env::var(var).map_err(|_| {
                err(
                    section.to_string(),
                    format!("environment variable {var} is not set"),
                )
            })
        };
        for (name, c) in &self.channels {
            self.check_channel(name, c)?;
            let section = format!("notifications.channels.{name}");
            let timeout = c.timeout.unwrap_or_else(default_call_timeout);
            let channel = match c.kind {
                ChannelKind::Webhook => {
                    let url = match (&c.url, &c.url_env) {
                        (Some(url), _) => url.clone(),
                        (None, Some(var)) => env(&section, var)?,
                        (None, None) => unreachable!("checked"),
                    };
                    reqwest::Url::parse(&url)
                        .map_err(|e| err(section.clone(), format!("url: {e}")))?;
                    Channel::Webhook(
                        WebhookChannel::new(&url, timeout)
                            .map_err(|e| err(section.clone(), e.to_string()))?,
                    )
                }
                ChannelKind::Email => {
                    let tls = c.tls.unwrap_or(SmtpTls::Starttls);
                    let credentials = match (&c.username_env, &c.password_env) {
                        (Some(u), Some(p)) => Some((env(&section, u)?, env(&section, p)?)),
                        _ => None,
                    };
                    let settings = EmailSettings {
                        host: c.host.clone().unwrap_or_default(),
                        port: c.port.unwrap_or(match tls {
                            SmtpTls::Starttls => 587,
                            SmtpTls::Tls => 465,
                            SmtpTls::None => 25,
                        }),
                        tls,
                        from: c.from.clone().unwrap_or_default(),
                        credentials,
                        timeout,
                    };
                    Channel::Email(Box::new(
                        EmailChannel::new(&settings).map_err(|m| err(section.clone(), m))?,
                    ))
                }
            };
            channels.insert(name, channel);
        }
        Ok(channels)
    }
}

/// Everything the response stage runs with, built and checked from the configuration.
pub struct ResponseSetup {
    pub responders: super::Responders<Backend>,
    pub retry: RetryPolicy,
    /// A fresh coalescer with the configured routing and intervals.
    pub coalescer: super::notify::Coalescer,
}

impl ResponseSetup {
    pub fn new(
        response: &ResponseConfig,
        notifications: &NotificationsConfig,
    ) -> Result<ResponseSetup, ResponseConfigError> {
        let routing = notifications.routing()?;
        let (group_interval, repeat_interval) = notifications.intervals()?;
        Ok(ResponseSetup {
            responders: super::Responders {
                reset: response.backend()?,
                channels: notifications.channels()?,
            },
            retry: response.retry_policy()?,
            coalescer: super::notify::Coalescer::new(routing, group_interval, repeat_interval),
        })
    }
}
