//! The scaling policies the simulator compares: funcscale's, KEDA's Redis list scaler (any
//! `listLength`, `pollingInterval`, `cooldownPeriod`) driving an HPA, and an HPA on CPU.

use std::collections::VecDeque;

use funcscale_operator::policy::{self, History, Input, Observation, PolicyConfig};

/// What a scaler sees at a decision: what the operator (or KEDA's metrics) could read live.
#[derive(Clone, Debug, PartialEq)]
pub struct View {
    /// Simulated time in seconds.
    pub t: u64,
    /// Tasks waiting.
    pub depth: u64,
    /// Tasks arrived per second over the poller's rate window (10 s).
    pub arrival_rate: f64,
    /// Of those, the tasks per second that stayed in the backlog (its rise over the window).
    pub one_off_rate: f64,
    /// Tasks running.
    pub in_flight: u64,
    /// Share of the ready processes that were busy over the last second (CPU proxy).
    pub utilization: f64,
    /// Pods now (the Deployment's replicas).
    pub replicas: i32,
    /// Task time in ms as the operator knows it: the average of the completed tasks (the
    /// workers' decaying average), else the queue's hint.
    pub task_ms: f64,
    /// Whether `task_ms` was measured (else it is the hint).
    pub task_time_measured: bool,
    /// Scheduled executions per minute the queue's schedules announce.
    pub scheduled_per_minute: u64,
}

/// A scaling policy under test.
pub trait Scaler {
    /// Name for the report.
    fn name(&self) -> String;
    /// New replica count, or `None` to leave it (called every simulated second).
    fn step(&mut self, view: &View) -> Option<i32>;
}

/// funcscale's policy, polled every `poll_s` seconds.
pub struct Funcscale {
    /// Policy configuration.
    pub config: PolicyConfig,
    /// Poll interval in seconds (default 1).
    pub poll_s: u64,
    history: History,
}

impl Funcscale {
    /// funcscale with the pool's configuration.
    pub fn new(config: PolicyConfig) -> Self {
        Self {
            config,
            poll_s: 1,
            history: History::default(),
        }
    }
}

impl Scaler for Funcscale {
    fn name(&self) -> String {
        "funcscale".to_string()
    }

    fn step(&mut self, v: &View) -> Option<i32> {
        if !v.t.is_multiple_of(self.poll_s.max(1)) {
            return None;
        }
        let input = Input {
            now_ms: v.t * 1000,
            current: v.replicas,
            observation: Some(Observation {
                depth: v.depth,
                due: 0,
                arrival_rate: v.arrival_rate,
                one_off_rate: v.one_off_rate,
                in_flight: v.in_flight,
                task_time_ms: v.task_ms,
                task_time_measured: v.task_time_measured,
                scheduled_per_period: v.scheduled_per_minute,
            }),
        };
        Some(policy::decide(&self.config, &input, &mut self.history).desired)
    }
}

/// HPA behaviour shared by the KEDA-style and HPA-style scalers (Kubernetes defaults):
/// sync every 15 s, 10 % tolerance, scale-up by max(4 pods, 100 %) per 15 s, scale-down
/// to the highest recommendation of the last 300 s.
struct Hpa {
    min: i32,
    max: i32,
    recommendations: VecDeque<(u64, i32)>,
}

impl Hpa {
    const SYNC_S: u64 = 15;
    const WINDOW_S: u64 = 300;
    const TOLERANCE: f64 = 0.1;

    fn new(min: i32, max: i32) -> Self {
        Self {
            min,
            max,
            recommendations: VecDeque::new(),
        }
    }

    fn decide(&mut self, t: u64, current: i32, ratio: f64) -> i32 {
        let raw = if (ratio - 1.0).abs() <= Self::TOLERANCE && current > 0 {
            current
        } else {
            (f64::from(current.max(1)) * ratio).ceil() as i32
        };
        let rec = raw.clamp(self.min, self.max);
        self.recommendations
            .retain(|(at, _)| at + Self::WINDOW_S >= t);
        self.recommendations.push_back((t, rec));
        if rec > current {
            rec.min(current + current.max(4))
        } else {
            let highest = self
                .recommendations
                .iter()
                .map(|(_, r)| *r)
                .max()
                .unwrap_or(rec);
            highest.min(current)
        }
    }
}

/// A KEDA ScaledObject with the Redis list scaler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KedaSettings {
    /// `listLength`: target list length per pod (the HPA's AverageValue).
    pub list_length: u32,
    /// `pollingInterval` in seconds: how often KEDA checks activity (0 → 1, and idleness).
    pub polling_s: u64,
    /// `cooldownPeriod` in seconds: idle time before 1 → 0.
    pub cooldown_s: u64,
}

impl KedaSettings {
    /// KEDA's documented defaults: `listLength` 5, `pollingInterval` 30, `cooldownPeriod` 300.
    pub const DEFAULTS: Self = Self {
        list_length: 5,
        polling_s: 30,
        cooldown_s: 300,
    };
}

/// KEDA's Redis list scaler (scale to zero, `minReplicaCount` 0) and the HPA it creates for
/// 1..max at the HPA's defaults.
pub struct Keda {
    settings: KedaSettings,
    hpa: Hpa,
    last_active: u64,
}

impl Keda {
    /// KEDA with its documented defaults.
    pub fn new(max: i32) -> Self {
        Self::with(KedaSettings::DEFAULTS, max)
    }

    /// KEDA with the given settings.
    pub fn with(settings: KedaSettings, max: i32) -> Self {
        Self {
            settings,
            hpa: Hpa::new(1, max),
            last_active: 0,
        }
    }
}

impl Scaler for Keda {
    fn name(&self) -> String {
        let s = self.settings;
        if s == KedaSettings::DEFAULTS {
            "keda-defaults".to_string()
        } else {
            format!(
                "keda L={} poll={}s cool={}s",
                s.list_length, s.polling_s, s.cooldown_s
            )
        }
    }

    fn step(&mut self, v: &View) -> Option<i32> {
        let s = self.settings;
        let active = v.depth > 0;
        if v.t.is_multiple_of(s.polling_s.max(1)) {
            if active {
                self.last_active = v.t;
            }
            if v.replicas == 0 {
                return active.then_some(1);
            }
            if !active && v.t >= self.last_active + s.cooldown_s {
                return Some(0);
            }
        }
        if v.replicas > 0 && v.t.is_multiple_of(Hpa::SYNC_S) {
            // AverageValue target: metric per pod against listLength
            let ratio = v.depth as f64 / (f64::from(v.replicas) * f64::from(s.list_length.max(1)));
            return Some(self.hpa.decide(v.t, v.replicas, ratio));
        }
        None
    }
}

/// A plain HPA on CPU utilization (target 80 %, minReplicas 1: it cannot scale to zero).
pub struct HpaCpu {
    hpa: Hpa,
    target: f64,
}

impl HpaCpu {
    /// An HPA with the given max.
    pub fn new(max: i32) -> Self {
        Self {
            hpa: Hpa::new(1, max),
            target: 0.8,
        }
    }
}

impl Scaler for HpaCpu {
    fn name(&self) -> String {
        "hpa-cpu".to_string()
    }

    fn step(&mut self, v: &View) -> Option<i32> {
        if v.replicas == 0 {
            return Some(1);
        }
        if !v.t.is_multiple_of(Hpa::SYNC_S) {
            return None;
        }
        Some(
            self.hpa
                .decide(v.t, v.replicas, v.utilization / self.target),
        )
    }
}
