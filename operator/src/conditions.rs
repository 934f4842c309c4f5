//! Kubernetes-style conditions: set one, keeping `lastTransitionTime` when the status
//! does not change.

use crate::crd::Condition;

/// `True` / `False`.
pub fn status_str(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}

/// A condition to set; `last_transition_time` is filled in by [`set`].
pub fn new(
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: status_str(status).to_string(),
        reason: reason.to_string(),
        message: message.into(),
        last_transition_time: String::new(),
        observed_generation: generation,
    }
}

/// Set `c` in `conditions` (by type). `lastTransitionTime` is kept from the previous
/// condition of the same type when its status is unchanged, else it becomes `now`.
pub fn set(conditions: &mut Vec<Condition>, mut c: Condition, now: &str) {
    match conditions.iter_mut().find(|old| old.type_ == c.type_) {
        Some(old) => {
            c.last_transition_time = if old.status == c.status {
                old.last_transition_time.clone()
            } else {
                now.to_string()
            };
            *old = c;
        }
        None => {
            c.last_transition_time = now.to_string();
            conditions.push(c);
        }
    }
}

/// The condition of `type_`, if any.
pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Remove the condition of `type_`.
pub fn remove(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_kept_while_status_unchanged() {
        let mut cs = vec![];
        set(&mut cs, new("Ready", false, "Starting", "", Some(1)), "t1");
        set(&mut cs, new("Ready", false, "Waiting", "m", Some(2)), "t2");
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0].last_transition_time, "t1");
        assert_eq!(cs[0].reason, "Waiting");
        set(&mut cs, new("Ready", true, "Ready", "", Some(2)), "t3");
        assert_eq!(cs[0].last_transition_time, "t3");
    }
}
