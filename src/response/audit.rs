//! Audit entries in Slack's audit-log shape for the decisions that act or should be seen: resets
//! (`user_sessions_reset_by_anomaly_event_response`), monitored decisions and suppressed loops
//! (actions of their own). Each entry's id derives from its decision, so writing it twice is a
//! no-op in the store.

use serde_json::{json, Value};

use crate::model::decision::{Decision, Outcome};

/// The audit action recorded for a decision, if any.
pub fn action(outcome: Outcome) -> Option<&'static str> {
    match outcome {
        Outcome::Reset | Outcome::ResetPersisting => {
            Some("user_sessions_reset_by_anomaly_event_response")
        }
        Outcome::Monitored => Some("anomaly_event_response_monitored"),
        Outcome::LoopSuppressed => Some("anomaly_event_response_loop_suppressed"),
        Outcome::Excluded | Outcome::Ignored | Outcome::Duplicate => None,
    }
}

/// The Slack-shaped audit entry of a decision, or `None` for outcomes that record none.
pub fn entry(decision: &Decision) -> Option<Value> {
    let action = action(decision.outcome)?;
    let anomaly = &decision.anomaly;
    let id = format!(
        "aer-{:032x}",
        xxhash_rust::xxh3::xxh3_128(format!("{}\u{0}{action}", decision.id).as_bytes())
    );
    let kind = anomaly.evidence.group_by.as_str();
    Some(json!({
        "id": id,
        "date_create": decision.decided_at,
        "action": action,
        "actor": {"type": "app", "app": {"id": "aer", "name": "aer anomaly event response"}},
        "entity": {"type": kind, kind: {"id": decision.user}},
        "context": {
            "location": {"type": "enterprise", "id": decision.enterprise},
            "session_id": anomaly.session_id,
        },
        "details": {
            "reasons": [anomaly.reason],
            "anomaly_id": anomaly.id,
            "decision_id": decision.id,
            "decision": decision.outcome.as_str(),
            "escalate": decision.escalate,
            "observed": anomaly.observed,
            "threshold": anomaly.threshold,
            "explanation": decision.explanation,
        },
    }))
}
