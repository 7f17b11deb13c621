//! Decisions (DESIGN 5): the per-enterprise policy that is an input collection of the dataflow
//! (modes, exclusions, groups, loop guard), the decision record each anomaly receives, and the
//! fold step that both engines apply per (enterprise, user) in time order.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::{Anomaly, GroupBy, Time};

/// What to do with anomalies of one reason.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Record nothing but the decision `ignored`.
    Off,
    /// Record and notify "would reset"; reset nothing (dry run).
    #[default]
    Monitor,
    /// Reset the user's sessions, subject to the loop guard.
    Respond,
}

/// Slack's shipping defaults: `tor` and `unexpected_scraping` respond, everything else monitors.
pub fn default_mode(reason: &str) -> Mode {
    match reason {
        "tor" | "unexpected_scraping" => Mode::Respond,
        _ => Mode::Monitor,
    }
}

/// The longest loop window or cooldown a policy may have (7 days): the fold keeps a user's
/// resets this long and no longer, so its state is bounded and eviction never changes a result.
pub const LOOP_HORIZON: u64 = 7 * 86_400;

/// The loop guard's parameters, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LoopGuard {
    /// Resets of a user in this trailing window count towards `max_resets` (default 24 h).
    pub window: u64,
    /// A reset this recent makes a new anomaly a duplicate or a persisting actor (default 15 min).
    pub cooldown: u64,
    /// With this many resets in the window, no more resets: escalate (default 3).
    pub max_resets: u64,
}

impl Default for LoopGuard {
    fn default() -> Self {
        LoopGuard {
            window: 86_400,
            cooldown: 900,
            max_resets: 3,
        }
    }
}

/// Users (directly or through groups) excluded from some reasons (all when `reasons` is empty).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exclusion {
    #[serde(default)]
    pub users: BTreeSet<String>,
    #[serde(default)]
    pub groups: BTreeSet<String>,
    /// The reasons it applies to; empty means every reason.
    #[serde(default)]
    pub reasons: BTreeSet<String>,
}

/// Trusted networks (as Slack's `admin.audit.anomaly.allow`): events from them never produce
/// anomalies and never enter baselines.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AllowList {
    pub cidrs: BTreeSet<ipnet::IpNet>,
    pub asns: BTreeSet<u32>,
}

impl AllowList {
    /// Whether an event from `ip` (with AS number `asn`) is trusted.
    pub fn allows(&self, ip: Option<&str>, asn: Option<u32>) -> bool {
        if asn.is_some_and(|a| self.asns.contains(&a)) {
            return true;
        }
        if self.cidrs.is_empty() {
            return false;
        }
        match ip.and_then(|ip| ip.parse::<std::net::IpAddr>().ok()) {
            Some(addr) => self.cidrs.iter().any(|net| net.contains(&addr)),
            None => false,
        }
    }
}

/// One enterprise's decision policy (or the default for enterprises without their own).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Policy {
    /// Mode per reason; a reason not listed takes [`default_mode`].
    pub modes: BTreeMap<String, Mode>,
    pub exclusions: Vec<Exclusion>,
    /// Named groups of users, for exclusions.
    pub groups: BTreeMap<String, BTreeSet<String>>,
    pub loop_guard: LoopGuard,
    /// Trusted networks of this enterprise.
    pub allow: AllowList,
}

impl Policy {
    pub fn mode(&self, reason: &str) -> Mode {
        self.modes
            .get(reason)
            .copied()
            .unwrap_or_else(|| default_mode(reason))
    }

    /// Why `user` is excluded from `reason`, if it is: `user` or `group:<name>`.
    pub fn excluded_by(&self, user: &str, reason: &str) -> Option<String> {
        for ex in &self.exclusions {
            if !ex.reasons.is_empty() && !ex.reasons.contains(reason) {
                continue;
            }
            if ex.users.contains(user) {
                return Some("user".to_string());
            }
            for group in &ex.groups {
                if self.groups.get(group).is_some_and(|m| m.contains(user)) {
                    return Some(format!("group:{group}"));
                }
            }
        }
        None
    }

    /// A short stable fingerprint of the policy, recorded in every decision.
    pub fn version(&self) -> String {
        let text = serde_json::to_string(self).unwrap_or_default();
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
    }
}

/// Which enterprise a policy record is for: `None` is the default for all others.
pub type PolicyScope = Option<String>;

/// The policies in force: a default and per-enterprise replacements.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policies {
    pub default: Policy,
    pub enterprises: BTreeMap<String, Policy>,
}

impl Policies {
    pub fn for_enterprise(&self, enterprise: &str) -> &Policy {
        self.enterprises.get(enterprise).unwrap_or(&self.default)
    }

    /// As records of the policy collection.
    pub fn records(&self) -> Vec<(PolicyScope, Policy)> {
        let mut v = vec![(None, self.default.clone())];
        v.extend(
            self.enterprises
                .iter()
                .map(|(e, p)| (Some(e.clone()), p.clone())),
        );
        v
    }
}

/// The decision outcomes of DESIGN 5.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Excluded,
    Ignored,
    Monitored,
    Duplicate,
    LoopSuppressed,
    ResetPersisting,
    Reset,
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Excluded => "excluded",
            Outcome::Ignored => "ignored",
            Outcome::Monitored => "monitored",
            Outcome::Duplicate => "duplicate",
            Outcome::LoopSuppressed => "loop_suppressed",
            Outcome::ResetPersisting => "reset_persisting",
            Outcome::Reset => "reset",
        }
    }

    /// Whether the response stage resets the user's sessions.
    pub fn resets(&self) -> bool {
        matches!(self, Outcome::Reset | Outcome::ResetPersisting)
    }

    /// Whether humans must be told beyond the usual notification.
    pub fn escalates(&self) -> bool {
        matches!(self, Outcome::LoopSuppressed | Outcome::ResetPersisting)
    }
}

/// The configuration in force when a decision was made.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InForce {
    pub mode: Mode,
    pub loop_guard: LoopGuard,
    /// `user` or `group:<name>` when the user was excluded.
    pub excluded_by: Option<String>,
    /// [`Policy::version`] of the policy applied.
    pub policy_version: String,
}

/// Exactly one per anomaly.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Decision {
    /// Deterministic, derived from the anomaly id: the response stage's idempotency key.
    pub id: String,
    pub decided_at: Time,
    pub enterprise: String,
    pub user: String,
    pub outcome: Outcome,
    pub resets_sessions: bool,
    pub escalate: bool,
    pub explanation: String,
    pub config: InForce,
    /// Resets of the user in the loop window before this decision.
    pub recent_resets: u64,
    pub last_reset: Option<Time>,
    /// When the anomaly's session was first seen (None: no session, or not seen).
    pub session_first_seen: Option<Time>,
    pub anomaly: Anomaly,
}

impl Decision {
    pub fn make_id(anomaly_id: &str) -> String {
        format!(
            "d-{:032x}",
            xxhash_rust::xxh3::xxh3_128(format!("decision\u{0}{anomaly_id}").as_bytes())
        )
    }
}

/// The fold state of one (enterprise, user): its recent resets, oldest first.
#[derive(Clone, Debug, Default)]
pub struct UserFold {
    resets: VecDeque<Time>,
}

impl UserFold {
    /// Whether the state can be dropped at `now` without changing any later decision: every
    /// remembered reset is at least [`LOOP_HORIZON`] old.
    pub fn is_idle(&self, now: Time) -> bool {
        self.resets
            .back()
            .is_none_or(|last| now.saturating_sub(*last) >= LOOP_HORIZON)
    }

    /// Decides one anomaly (the caller folds a user's anomalies in (time, id) order) and updates
    /// the state. Old resets are dropped as they leave max(loop window, cooldown).
    pub fn decide(
        &mut self,
        anomaly: Anomaly,
        policy: &Policy,
        session_first_seen: Option<Time>,
    ) -> Decision {
        let now = anomaly.detected_at;
        let guard = policy.loop_guard;
        // State older than the engine's fixed horizon can never matter (policies are validated
        // to keep their window and cooldown within it), whatever the policy becomes later.
        while self
            .resets
            .front()
            .is_some_and(|r| now.saturating_sub(*r) >= LOOP_HORIZON)
        {
            self.resets.pop_front();
        }
        let recent = self
            .resets
            .iter()
            .filter(|r| now.saturating_sub(**r) < guard.window)
            .count() as u64;
        let last = self
            .resets
            .back()
            .copied()
            .filter(|r| now.saturating_sub(*r) < guard.window.max(guard.cooldown));
        let within_cooldown = last.is_some_and(|r| now.saturating_sub(r) < guard.cooldown);
        // A session first seen after the last reset is a new sign-in; anything else (including
        // no session information) is treated as the session that was already reset.
        let new_session = matches!((session_first_seen, last), (Some(f), Some(r)) if f > r);
        let mode = effective_mode(policy, &anomaly);
        let outcome = if policy.excluded_by(&anomaly.user, &anomaly.reason).is_some() {
            Outcome::Excluded
        } else if mode == Mode::Off {
            Outcome::Ignored
        } else if mode == Mode::Monitor {
            Outcome::Monitored
        } else if within_cooldown && !new_session {
            Outcome::Duplicate
        } else if recent >= guard.max_resets {
            Outcome::LoopSuppressed
        } else if within_cooldown {
            Outcome::ResetPersisting
        } else {
            Outcome::Reset
        };
        if outcome.resets() {
            self.resets.push_back(now);
        }
        Decision::record(anomaly, outcome, policy, recent, last, session_first_seen)
    }
}

/// The mode applied to an anomaly: the policy's, except that only a user can have sessions
/// reset, so `respond` on a rule keyed by IP or session acts as `monitor`.
pub fn effective_mode(policy: &Policy, anomaly: &Anomaly) -> Mode {
    let configured = policy.mode(&anomaly.reason);
    if configured == Mode::Respond && anomaly.evidence.group_by != GroupBy::User {
        Mode::Monitor
    } else {
        configured
    }
}

impl Decision {
    /// Builds the decision record, with its one-line explanation, for an outcome already
    /// decided.
    pub fn record(
        anomaly: Anomaly,
        outcome: Outcome,
        policy: &Policy,
        recent_resets: u64,
        last_reset: Option<Time>,
        session_first_seen: Option<Time>,
    ) -> Decision {
        let now = anomaly.detected_at;
        let guard = policy.loop_guard;
        let mode = effective_mode(policy, &anomaly);
        let excluded_by = policy.excluded_by(&anomaly.user, &anomaly.reason);
        let user = &anomaly.user;
        let reason = &anomaly.reason;
        let session = anomaly.session_id.as_deref().unwrap_or("(none)");
        let ago = now.saturating_sub(last_reset.unwrap_or(now));
        let why = &anomaly.evidence.explanation;
        let explanation = match outcome {
            Outcome::Excluded => format!(
                "excluded: {user} is excluded from {reason} ({}); no action",
                excluded_by.as_deref().unwrap_or("?")
            ),
            Outcome::Ignored => format!("ignored: {reason} is off for {}", anomaly.enterprise),
            Outcome::Monitored => {
                let note = if policy.mode(reason) == Mode::Respond {
                    " (the rule is not keyed by user: no sessions to reset)"
                } else {
                    ""
                };
                format!("monitored: would reset {user}'s sessions{note}: {why}")
            }
            Outcome::Duplicate => format!(
                "duplicate: {user}'s sessions were reset {ago}s ago and session {session} predates that reset"
            ),
            Outcome::LoopSuppressed => format!(
                "loop suppressed: {recent_resets} resets of {user} in the last {}s; escalating instead of resetting again: {why}",
                guard.window
            ),
            Outcome::ResetPersisting => format!(
                "reset again and escalate: session {session} began after the reset {ago}s ago, the actor came back: {why}"
            ),
            Outcome::Reset => format!("reset {user}'s sessions: {why}"),
        };
        Decision {
            id: Decision::make_id(&anomaly.id),
            decided_at: now,
            enterprise: anomaly.enterprise.clone(),
            user: anomaly.user.clone(),
            outcome,
            resets_sessions: outcome.resets(),
            escalate: outcome.escalates(),
            explanation,
            config: InForce {
                mode,
                loop_guard: guard,
                excluded_by,
                policy_version: policy.version(),
            },
            recent_resets,
            last_reset,
            session_first_seen,
            anomaly,
        }
    }
}
