//! Notifications: who is told about a decision, and when. [`Routing`] maps a decision to its
//! recipients from the per-enterprise configuration (the affected user, the Org Primary Owner,
//! Security Admins). [`Coalescer`] is a deterministic state machine clocked by event time that
//! turns the stream of routed decisions into messages: per (enterprise, recipient) the first alert
//! goes out at once, later ones within `group_interval` wait and go out as one digest, and the
//! same (user, reason) is not repeated to a recipient within `repeat_interval` (such repeats are
//! counted on the next message). Delivery is a job in the store like a reset ([`super::channel`]).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::model::decision::{Decision, Outcome};
use crate::model::{GroupBy, Time};

/// Whom a route addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The user the decision is about (address = their user id).
    User,
    OrgPrimaryOwner,
    SecurityAdmin,
}

/// One recipient: a role, an address and the channel that reaches it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Recipient {
    pub role: Role,
    pub address: String,
    /// The name of a configured channel (`log` is always there).
    pub channel: String,
}

/// One route: the outcomes that notify a role, over which channel, to which addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub role: Role,
    pub channel: String,
    /// Fixed addresses (owner, admins); the user role addresses the decision's user.
    pub addresses: Vec<String>,
    pub on: BTreeSet<Outcome>,
}

/// The routes of every enterprise, over a default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routing {
    pub default: Vec<Route>,
    pub enterprises: BTreeMap<String, Vec<Route>>,
}

impl Routing {
    /// The recipients of a decision, in a fixed order, without repeats.
    pub fn recipients(&self, decision: &Decision) -> Vec<Recipient> {
        let routes = self
            .enterprises
            .get(&decision.enterprise)
            .unwrap_or(&self.default);
        let mut out = BTreeSet::new();
        for route in routes.iter().filter(|r| r.on.contains(&decision.outcome)) {
            match route.role {
                // Only an anomaly keyed by user names a user to tell (an IP- or session-keyed
                // rule's key is not a user id).
                Role::User => {
                    if decision.anomaly.evidence.group_by == GroupBy::User {
                        out.insert(Recipient {
                            role: Role::User,
                            address: decision.user.clone(),
                            channel: route.channel.clone(),
                        });
                    }
                }
                role => {
                    for address in &route.addresses {
                        out.insert(Recipient {
                            role,
                            address: address.clone(),
                            channel: route.channel.clone(),
                        });
                    }
                }
            }
        }
        out.into_iter().collect()
    }
}

/// One decision inside a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub decision_id: String,
    pub anomaly_id: String,
    pub decided_at: Time,
    pub user: String,
    pub reason: String,
    pub outcome: Outcome,
    pub session_id: Option<String>,
    pub explanation: String,
}

impl Item {
    fn of(decision: &Decision) -> Item {
        Item {
            decision_id: decision.id.clone(),
            anomaly_id: decision.anomaly.id.clone(),
            decided_at: decision.decided_at,
            user: decision.user.clone(),
            reason: decision.anomaly.reason.clone(),
            outcome: decision.outcome,
            session_id: decision.anomaly.session_id.clone(),
            explanation: decision.explanation.clone(),
        }
    }
}

/// A first alert, sent at once, or a digest of the alerts held during `group_interval`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    Alert,
    Digest,
}

/// A message to one recipient: a line of `notifications.jsonl` and the payload of a delivery job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Deterministic (enterprise, recipient, send time, decisions): the delivery's idempotency key.
    pub id: String,
    pub enterprise: String,
    pub recipient: Recipient,
    /// The event time the message is due.
    pub send_at: Time,
    pub kind: MessageKind,
    pub items: Vec<Item>,
    /// Alerts for a (user, reason) already sent to this recipient within `repeat_interval`,
    /// left out since the previous message.
    pub repeats_suppressed: u64,
    pub subject: String,
    pub text: String,
}

impl Notification {
    fn new(
        enterprise: &str,
        recipient: &Recipient,
        send_at: Time,
        kind: MessageKind,
        items: Vec<Item>,
        repeats_suppressed: u64,
    ) -> Notification {
        let mut key = format!(
            "notification\u{0}{enterprise}\u{0}{:?}\u{0}{}\u{0}{}\u{0}{send_at}",
            recipient.role, recipient.address, recipient.channel
        );
        for item in &items {
            key.push('\u{0}');
            key.push_str(&item.decision_id);
        }
        let id = format!("n-{:032x}", xxhash_rust::xxh3::xxh3_128(key.as_bytes()));
        let (subject, text) = render(enterprise, recipient, kind, &items, repeats_suppressed);
        Notification {
            id,
            enterprise: enterprise.to_string(),
            recipient: recipient.clone(),
            send_at,
            kind,
            items,
            repeats_suppressed,
            subject,
            text,
        }
    }
}

fn render(
    enterprise: &str,
    recipient: &Recipient,
    kind: MessageKind,
    items: &[Item],
    repeats: u64,
) -> (String, String) {
    let line = |item: &Item| {
        let when = chrono::DateTime::from_timestamp(item.decided_at as i64, 0)
            .map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
            .unwrap_or_else(|| item.decided_at.to_string());
        format!(
            "{when} {} {} ({}): {}",
            item.outcome.as_str(),
            item.user,
            item.reason,
            item.explanation
        )
    };
    let subject = match (recipient.role, kind, items) {
        (Role::User, _, [item]) if item.outcome.resets() => {
            "Your Slack sessions were ended after unusual activity".to_string()
        }
        (_, MessageKind::Alert, [item]) => format!(
            "aer: {} {} in {enterprise} ({})",
            item.outcome.as_str(),
            item.user,
            item.reason
        ),
        _ => format!("aer: {} alerts in {enterprise}", items.len()),
    };
    let mut text = match recipient.role {
        Role::User => "aer saw activity on your account that looks like a threat. If the \
                       sessions ended were yours, sign in again; tell your security team if \
                       you do not recognise the activity.\n"
            .to_string(),
        _ => String::new(),
    };
    for item in items {
        text.push_str(&line(item));
        text.push('\n');
    }
    if repeats > 0 {
        text.push_str(&format!(
            "({repeats} repeated alerts for users and reasons already reported were not repeated)\n"
        ));
    }
    (subject, text)
}

/// The coalescing state of one (enterprise, recipient).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct RecipientState {
    last_sent: Option<Time>,
    pending: Vec<Item>,
    repeats: u64,
    /// When each (user, reason) was last put in a message to this recipient.
    notified: BTreeMap<(String, String), Time>,
}

type Key = (String, Recipient);

/// The notification coalescer. Feed it decisions in (decided_at, id) order with [`offer`],
/// advance its clock with [`advance_to`] and flush the held digests with [`finish`] at the end of
/// a replay. Its state is plain data, so a live service can persist it.
///
/// [`offer`]: Coalescer::offer
/// [`advance_to`]: Coalescer::advance_to
/// [`finish`]: Coalescer::finish
#[derive(Clone, Debug)]
pub struct Coalescer {
    routing: Routing,
    group_interval: Time,
    repeat_interval: Time,
    state: BTreeMap<Key, RecipientState>,
    /// Held digests by due time.
    flushes: BTreeSet<(Time, Key)>,
    /// Alerts left out as repeats, in all.
    pub suppressed: u64,
}

impl Coalescer {
    pub fn new(routing: Routing, group_interval: Time, repeat_interval: Time) -> Coalescer {
        Coalescer {
            routing,
            group_interval,
            repeat_interval,
            state: BTreeMap::new(),
            flushes: BTreeSet::new(),
            suppressed: 0,
        }
    }

    /// Takes one decision (event time `decided_at`, never earlier than the previous one) and
    /// returns the messages due by then: held digests whose interval ended, and a first alert.
    pub fn offer(&mut self, decision: &Decision) -> Vec<Notification> {
        let now = decision.decided_at;
        let mut out = self.advance_to(now);
        for recipient in self.routing.recipients(decision) {
            let key = (decision.enterprise.clone(), recipient);
            let state = self.state.entry(key.clone()).or_default();
            let topic = (decision.user.clone(), decision.anomaly.reason.clone());
            if let Some(at) = state.notified.get(&topic) {
                if now.saturating_sub(*at) < self.repeat_interval {
                    state.repeats += 1;
                    self.suppressed += 1;
                    tracing::debug!(
                        enterprise = %key.0,
                        recipient = %key.1.address,
                        user = %decision.user,
                        reason = %decision.anomaly.reason,
                        "notification not repeated within repeat_interval"
                    );
                    continue;
                }
            }
            state.notified.insert(topic, now);
            let open = state
                .last_sent
                .is_some_and(|sent| now < sent + self.group_interval);
            if state.pending.is_empty() && !open {
                state.last_sent = Some(now);
                let repeats = std::mem::take(&mut state.repeats);
                out.push(Notification::new(
                    &key.0,
                    &key.1,
                    now,
                    MessageKind::Alert,
                    vec![Item::of(decision)],
                    repeats,
                ));
                let horizon = self.repeat_interval;
                state
                    .notified
                    .retain(|_, at| now.saturating_sub(*at) < horizon);
            } else {
                if state.pending.is_empty() {
                    let due = state.last_sent.unwrap_or(now) + self.group_interval;
                    self.flushes.insert((due, key.clone()));
                }
                state.pending.push(Item::of(decision));
            }
        }
        out
    }

    /// Sends the digests due at or before `now`.
    pub fn advance_to(&mut self, now: Time) -> Vec<Notification> {
        let mut out = Vec::new();
        while let Some((due, _)) = self.flushes.first() {
            if *due > now {
                break;
            }
            let (due, key) = self.flushes.pop_first().expect("first exists");
            out.push(self.flush(due, &key));
        }
        out
    }

    /// Sends every held digest at its due time: the end of a replay.
    pub fn finish(&mut self) -> Vec<Notification> {
        self.advance_to(Time::MAX)
    }

    /// The earliest time a held digest is due.
    pub fn next_due(&self) -> Option<Time> {
        self.flushes.first().map(|(t, _)| *t)
    }

    fn flush(&mut self, due: Time, key: &Key) -> Notification {
        let state = self.state.get_mut(key).expect("a held digest has state");
        let items = std::mem::take(&mut state.pending);
        let repeats = std::mem::take(&mut state.repeats);
        state.last_sent = Some(due);
        let horizon = self.repeat_interval;
        state
            .notified
            .retain(|_, at| due.saturating_sub(*at) < horizon);
        Notification::new(&key.0, &key.1, due, MessageKind::Digest, items, repeats)
    }

    /// Every message for `decisions` (in (decided_at, id) order), held digests included, ordered
    /// by (send time, id): what `aer replay` writes to `notifications.jsonl`.
    pub fn run(mut self, decisions: &[Decision]) -> (Vec<Notification>, u64) {
        let mut out = Vec::new();
        for decision in decisions {
            out.extend(self.offer(decision));
        }
        out.extend(self.finish());
        out.sort_by(|a, b| (a.send_at, &a.id).cmp(&(b.send_at, &b.id)));
        (out, self.suppressed)
    }
}
