//! The batch reference for decisions (DESIGN 5): for every anomaly, in (time, id) order, look at
//! the user's whole history of earlier decisions and at every event of the anomaly's session, and
//! classify. No state is carried or evicted; only the record's formatting is shared with the
//! engine ([`Decision::record`]).

use std::collections::BTreeMap;

use crate::dataflow::EngineInput;
use crate::model::decision::{effective_mode, Decision, Mode, Outcome, Policies, Policy};
use crate::model::{Anomaly, Time};

pub(crate) fn policy_at<'a>(
    timeline: &'a [(Time, Policies)],
    enterprise: &str,
    time: Time,
    fallback: &'a Policy,
) -> &'a Policy {
    timeline
        .iter()
        .rev()
        .find(|(from, _)| *from <= time)
        .map_or(fallback, |(_, p)| p.for_enterprise(enterprise))
}

/// When the session was first seen as of `now`: the start of its current run of activity,
/// where a gap longer than the expiry starts a new run; `None` if unseen or expired.
fn first_seen(input: &EngineInput, anomaly: &Anomaly, now: Time) -> Option<Time> {
    let session = anomaly.session_id.as_deref()?;
    let mut run: Option<(Time, Time)> = None;
    for (time, event) in input.events.iter().take_while(|(t, _)| *t <= now) {
        if event.enterprise != anomaly.enterprise
            || event.user != anomaly.user
            || event.session.as_deref() != Some(session)
        {
            continue;
        }
        run = match run {
            Some((first, last)) if time - last <= input.session_expiry => Some((first, *time)),
            _ => Some((*time, *time)),
        };
    }
    let (first, last) = run?;
    (now - last <= input.session_expiry).then_some(first)
}

/// The decision for every anomaly, sorted by (time, decision id).
pub fn decisions(input: &EngineInput, anomalies: &[Anomaly]) -> Vec<Decision> {
    let fallback = Policy::default();
    let mut ordered: Vec<&Anomaly> = anomalies.iter().collect();
    ordered.sort_by(|a, b| (a.detected_at, &a.id).cmp(&(b.detected_at, &b.id)));
    // Per (enterprise, user): the times of earlier decisions that reset sessions.
    let mut resets: BTreeMap<(&str, &str), Vec<Time>> = BTreeMap::new();
    let mut out = Vec::new();
    for anomaly in ordered {
        let now = anomaly.detected_at;
        let policy = policy_at(&input.policies, &anomaly.enterprise, now, &fallback);
        let guard = policy.loop_guard;
        let history = resets
            .entry((anomaly.enterprise.as_str(), anomaly.user.as_str()))
            .or_default();
        let recent = history.iter().filter(|r| now - **r < guard.window).count() as u64;
        let last = history
            .iter()
            .copied()
            .max()
            .filter(|r| now - r < guard.window.max(guard.cooldown));
        let seen = first_seen(input, anomaly, now);
        let in_cooldown = matches!(last, Some(r) if now - r < guard.cooldown);
        let after_reset = matches!((seen, last), (Some(f), Some(r)) if f > r);
        let outcome = match effective_mode(policy, anomaly) {
            _ if policy.excluded_by(&anomaly.user, &anomaly.reason).is_some() => Outcome::Excluded,
            Mode::Off => Outcome::Ignored,
            Mode::Monitor => Outcome::Monitored,
            Mode::Respond if in_cooldown && !after_reset => Outcome::Duplicate,
            Mode::Respond if recent >= guard.max_resets => Outcome::LoopSuppressed,
            Mode::Respond if in_cooldown => Outcome::ResetPersisting,
            Mode::Respond => Outcome::Reset,
        };
        if matches!(outcome, Outcome::Reset | Outcome::ResetPersisting) {
            history.push(now);
        }
        out.push(Decision::record(
            anomaly.clone(),
            outcome,
            policy,
            recent,
            last,
            seen,
        ));
    }
    out.sort_by(|a, b| (a.decided_at, &a.id).cmp(&(b.decided_at, &b.id)));
    out
}
