//! The watch side of the API server: an event log fed by every successful write, keyed by
//! resourceVersion, streamed to watchers with bookmarks, and `410 Gone` once a resourceVersion
//! has fallen out of the retained history.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde_json::{Value, json};

use super::resources::ResourceInfo;

/// `ADDED`, `MODIFIED` or `DELETED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Event {
    pub rv: u64,
    pub resource: &'static ResourceInfo,
    pub kind: EventType,
    pub object: Value,
    /// The object before a MODIFIED write: a watch with a selector sees an object that starts or
    /// stops matching as ADDED or DELETED, as Kubernetes does.
    pub previous: Option<Value>,
}

impl Event {
    pub fn to_line(&self) -> String {
        let mut line = json!({"type": self.kind.as_str(), "object": self.object}).to_string();
        line.push('\n');
        line
    }
}

/// The retained history of writes.
#[derive(Debug)]
pub struct EventLog {
    events: VecDeque<Event>,
    /// Highest resourceVersion written.
    latest: u64,
    /// Events with a resourceVersion at or below this may be missing: a watch from an older
    /// resourceVersion answers `410 Gone`.
    compacted: u64,
    capacity: usize,
}

/// What a watcher gets when it asks for events after a resourceVersion.
pub enum Since {
    /// The events (already filtered) and the resourceVersion the watcher is now at.
    Events(Vec<Event>, u64),
    /// The resourceVersion is older than the retained history.
    Expired,
}

impl EventLog {
    pub fn new(capacity: usize) -> Self {
        Self {
            events: VecDeque::new(),
            latest: 0,
            compacted: 0,
            capacity: capacity.max(1),
        }
    }

    pub fn latest(&self) -> u64 {
        self.latest
    }

    pub fn push(&mut self, event: Event) {
        self.latest = self.latest.max(event.rv);
        self.events.push_back(event);
        while self.events.len() > self.capacity {
            if let Some(old) = self.events.pop_front() {
                self.compacted = self.compacted.max(old.rv);
            }
        }
    }

    /// Drop all history: every watch that resumes from an older resourceVersion gets `410 Gone`.
    pub fn compact(&mut self) {
        self.events.clear();
        self.compacted = self.latest;
    }

    pub fn since(&self, rv: u64, filter: &WatchFilter) -> Since {
        if rv < self.compacted {
            return Since::Expired;
        }
        let events = self
            .events
            .iter()
            .filter(|e| e.rv > rv)
            .filter_map(|e| {
                let now = filter.matches(e.resource, &e.object);
                let before = e.previous.as_ref().map(|p| filter.matches(e.resource, p));
                let kind = match (e.kind, now, before) {
                    (EventType::Modified, true, Some(false)) => EventType::Added,
                    (EventType::Modified, false, Some(true)) => EventType::Deleted,
                    (_, false, _) => return None,
                    (kind, true, _) => kind,
                };
                Some(Event { kind, ..e.clone() })
            })
            .collect();
        Since::Events(events, self.latest.max(rv))
    }
}

/// Which objects a list or watch covers.
#[derive(Debug, Clone)]
pub struct WatchFilter {
    pub resource: &'static ResourceInfo,
    pub namespace: Option<String>,
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
}

impl WatchFilter {
    pub fn new(
        resource: &'static ResourceInfo,
        namespace: Option<String>,
        query: &HashMap<String, String>,
    ) -> Self {
        Self {
            resource,
            namespace,
            label_selector: query
                .get("labelSelector")
                .filter(|s| !s.is_empty())
                .cloned(),
            field_selector: query
                .get("fieldSelector")
                .filter(|s| !s.is_empty())
                .cloned(),
        }
    }

    pub fn matches(&self, resource: &ResourceInfo, obj: &Value) -> bool {
        if resource != self.resource {
            return false;
        }
        let meta = &obj["metadata"];
        let ns = meta["namespace"].as_str().unwrap_or("");
        if let Some(want) = &self.namespace
            && ns != want
        {
            return false;
        }
        if let Some(sel) = &self.label_selector {
            let labels: BTreeMap<String, String> = meta["labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                        .collect()
                })
                .unwrap_or_default();
            if !kube_fake_client::label_selector::matches_label_selector(&labels, sel)
                .unwrap_or(false)
            {
                return false;
            }
        }
        if let Some(sel) = &self.field_selector {
            return field_selector_matches(sel, obj);
        }
        true
    }
}

/// `metadata.name` and `metadata.namespace` with `=`, `==` and `!=`: what controllers use.
/// Other fields are looked up by their dotted path in the object.
fn field_selector_matches(selector: &str, obj: &Value) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .all(|req| {
            let (field, want, negate) = if let Some((f, v)) = req.split_once("!=") {
                (f, v, true)
            } else if let Some((f, v)) = req.split_once("==") {
                (f, v, false)
            } else if let Some((f, v)) = req.split_once('=') {
                (f, v, false)
            } else {
                return false;
            };
            let mut cur = obj;
            for part in field.trim().split('.') {
                cur = &cur[part];
            }
            let have = match cur {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (have == want.trim()) != negate
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::lookup;

    fn cm(name: &str, ns: &str, rv: u64) -> Value {
        json!({"metadata": {"name": name, "namespace": ns, "resourceVersion": rv.to_string(), "labels": {"app": "x"}}})
    }

    #[test]
    fn since_filters_and_expires() {
        let res = lookup("", "v1", "configmaps").unwrap();
        let mut log = EventLog::new(2);
        for rv in 1..=3 {
            log.push(Event {
                rv,
                resource: res,
                kind: EventType::Added,
                object: cm(&format!("c{rv}"), "a", rv),
                previous: None,
            });
        }
        let filter = WatchFilter::new(res, Some("a".into()), &HashMap::new());
        assert!(matches!(log.since(0, &filter), Since::Expired));
        match log.since(1, &filter) {
            Since::Events(ev, at) => {
                assert_eq!(ev.len(), 2);
                assert_eq!(at, 3);
            }
            Since::Expired => panic!("rv 1 is retained"),
        }
        let other_ns = WatchFilter::new(res, Some("b".into()), &HashMap::new());
        assert!(matches!(log.since(1, &other_ns), Since::Events(ev, _) if ev.is_empty()));
    }

    #[test]
    fn selector_transitions() {
        let res = lookup("", "v1", "configmaps").unwrap();
        let mut log = EventLog::new(10);
        let unlabeled =
            json!({"metadata": {"name": "c", "namespace": "a", "resourceVersion": "1"}});
        let labeled = cm("c", "a", 2);
        log.push(Event {
            rv: 2,
            resource: res,
            kind: EventType::Modified,
            object: labeled.clone(),
            previous: Some(unlabeled.clone()),
        });
        log.push(Event {
            rv: 3,
            resource: res,
            kind: EventType::Modified,
            object: unlabeled.clone(),
            previous: Some(labeled),
        });
        let query = HashMap::from([("labelSelector".to_string(), "app=x".to_string())]);
        let filter = WatchFilter::new(res, None, &query);
        let Since::Events(events, _) = log.since(1, &filter) else {
            panic!("retained")
        };
        let kinds: Vec<EventType> = events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, vec![EventType::Added, EventType::Deleted]);
    }

    #[test]
    fn field_selectors() {
        let obj = cm("web", "prod", 1);
        assert!(field_selector_matches("metadata.name=web", &obj));
        assert!(field_selector_matches(
            "metadata.name==web,metadata.namespace=prod",
            &obj
        ));
        assert!(!field_selector_matches("metadata.name!=web", &obj));
        assert!(!field_selector_matches("metadata.name=api", &obj));
    }
}
