//! The scaling policy: plain data in, plain data out. No client, no clock, no Redis — time is
//! an input — so the operator, the `capacity` planner and the simulator share one definition
//! and it can be tested exhaustively.
//!
//! A decision is made in three steps:
//! 1. **load**: the pods the work needs, the larger of
//!    - cron load `ceil(M × T / (c × P))` (M scheduled executions per period P, T task time,
//!      c processes per pod), and
//!    - queue load: processes that keep up with arrivals and drain the backlog within the
//!      drain target, `ceil((λ'·T + D·T/W) / c)`, at least the pods the running tasks occupy
//!      `ceil(R / c)`, or in the KEDA-compatible mode `ceil(D / targetDepthPerPod)`. D is the
//!      backlog (waiting tasks, due retries and due deliveries); λ' the arrivals that keep coming (arrivals λ
//!      less the one-off part ρ above the rate window's median rate), so that a burst is
//!      counted once, as backlog, not also as a rate;
//! 2. **bounds**: idle pools go to zero only when `minReplicas` is 0 (and a pool at zero
//!    starts only above the activation depth, or when retries or deliveries are due: only its
//!    workers start those), then the result is clamped to [min, max];
//! 3. **behaviour** (as the HPA): scale up at once, at most `max(step, 100 %)` per decision;
//!    scale down only to the highest recommendation seen within the stabilization window, and
//!    never while the backlog grows. Without metrics the size is held.

use std::collections::VecDeque;
use std::fmt;

use crate::crd::{Autoscaling, DecisionStatus};

/// Milliseconds in the default cron period (one minute).
pub const DEFAULT_PERIOD_MS: u64 = 60_000;
/// How far ahead arrivals count in the queue load (H): 15 s. Chosen with `funcscale-sim` on the
/// built-in traces (H = 15 s against H = W = 60 s: pod-seconds 1.52 → 1.01 × the work bound on
/// steady load, 3.10 → 2.17 on bursty, 1.57 → 1.32 on diurnal, p95 wait within the drain
/// target on all four; see docs/keda-comparison.md).
pub const KEEP_UP_HORIZON_MS: u64 = 15_000;
/// Default processes per pod.
pub const DEFAULT_PROCESSES: u32 = 5;

/// How one autoscaled pool is sized.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyConfig {
    /// Fewest pods (0 allows scale to zero).
    pub min_replicas: i32,
    /// Most pods.
    pub max_replicas: i32,
    /// Processes per pod (c).
    pub processes_per_pod: u32,
    /// Cron period in ms (P).
    pub period_ms: u64,
    /// Time within which the backlog should drain, in ms (W).
    pub drain_target_ms: u64,
    /// How far ahead the arrivals count, in ms (H, at most W): the pool is sized to do the
    /// backlog and the arrivals of the next H within W.
    pub keep_up_horizon_ms: u64,
    /// KEDA-compatible mode: waiting tasks per pod.
    pub target_depth_per_pod: Option<u64>,
    /// A pool at zero starts only when more tasks than this wait, or when retries or
    /// deliveries are due ([`Observation::due`]).
    pub activation_depth: u64,
    /// Scale-down stabilization window in ms.
    pub scale_down_stabilization_ms: u64,
    /// Most pods added per decision (or 100 % of the current size, whichever is more).
    pub scale_up_max_step: i32,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            min_replicas: 1,
            max_replicas: 10,
            processes_per_pod: DEFAULT_PROCESSES,
            period_ms: DEFAULT_PERIOD_MS,
            drain_target_ms: 60_000,
            keep_up_horizon_ms: KEEP_UP_HORIZON_MS,
            target_depth_per_pod: None,
            activation_depth: 0,
            scale_down_stabilization_ms: 60_000,
            scale_up_max_step: 4,
        }
    }
}

impl PolicyConfig {
    /// The policy of a pool's `autoscaling` section.
    pub fn from_autoscaling(a: &Autoscaling, processes_per_pod: u32) -> Self {
        Self {
            min_replicas: a.min_replicas.max(0),
            max_replicas: a.max_replicas.max(a.min_replicas.max(0)),
            processes_per_pod: processes_per_pod.max(1),
            period_ms: a.period_ms.max(1),
            drain_target_ms: u64::from(a.drain_target_seconds.max(1)) * 1000,
            keep_up_horizon_ms: KEEP_UP_HORIZON_MS,
            target_depth_per_pod: a.target_depth_per_pod.filter(|t| *t > 0),
            activation_depth: a.activation_depth,
            scale_down_stabilization_ms: u64::from(a.scale_down_stabilization_seconds) * 1000,
            scale_up_max_step: a.scale_up_max_step.max(1),
        }
    }
}

/// What was measured for a pool's queues (summed over them), for one decision.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Observation {
    /// The backlog D: the queues' waiting tasks, due retries and due deliveries.
    pub depth: u64,
    /// Of `depth`, the work that only the pool's workers start and that is due now: retries
    /// whose due time has passed (a worker moves them to the queue) and deliveries due in the
    /// queues' outboxes (a worker makes them). It wakes a pool at zero whatever the activation
    /// depth says: no new task has to come for it.
    pub due: u64,
    /// Tasks arriving per second (λ).
    pub arrival_rate: f64,
    /// Of `arrival_rate`, the tasks per second that came as a one-off burst (ρ: above the
    /// rate window's median rate). They are counted in D, so the keep-up term uses λ − ρ;
    /// negative when the rate rose within the window (λ − ρ is then the new rate).
    pub one_off_rate: f64,
    /// Tasks running now (R).
    pub in_flight: u64,
    /// Task time in ms (T).
    pub task_time_ms: f64,
    /// Whether T was measured by workers (else it is the queue's hint).
    pub task_time_measured: bool,
    /// Scheduled executions per period (M).
    pub scheduled_per_period: u64,
}

/// The inputs of one decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Input {
    /// Now, in ms (any monotonic origin).
    pub now_ms: u64,
    /// The pool's current replica count.
    pub current: i32,
    /// The measurements, or `None` when they cannot be read (the size is then held).
    pub observation: Option<Observation>,
}

/// What the policy remembers between decisions of one pool.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    /// (time ms, recommendation) within the stabilization window.
    recommendations: VecDeque<(u64, i32)>,
    /// Depth seen at the previous decision.
    last_depth: Option<u64>,
}

impl History {
    fn record(&mut self, now_ms: u64, recommendation: i32, window_ms: u64) {
        let oldest = now_ms.saturating_sub(window_ms);
        while self
            .recommendations
            .front()
            .is_some_and(|(t, _)| *t < oldest)
        {
            self.recommendations.pop_front();
        }
        // keep the deque short: a newer, higher-or-equal value makes older lower ones irrelevant
        while self
            .recommendations
            .back()
            .is_some_and(|(_, r)| *r <= recommendation)
        {
            self.recommendations.pop_back();
        }
        self.recommendations.push_back((now_ms, recommendation));
    }

    fn highest(&self) -> Option<i32> {
        self.recommendations.iter().map(|(_, r)| *r).max()
    }

    /// When the highest recommendation inside the window leaves it (ms), i.e. when a
    /// scale-down held by the stabilization window can next go further. `None` if nothing is
    /// remembered.
    pub fn hold_ends_ms(&self, window_ms: u64) -> Option<u64> {
        // newer, higher values pop older lower ones, so the front is the highest
        self.recommendations
            .front()
            .map(|(t, _)| t.saturating_add(window_ms).saturating_add(1))
    }
}

/// The rule that produced a size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// `spec.replicas` of a pool without autoscaling.
    Fixed,
    /// A Beat pool: always one.
    Beat,
    /// Cron load formula.
    CronLoad,
    /// Arrivals and backlog.
    QueueLoad,
    /// KEDA-compatible depth per pod.
    TargetDepth,
    /// Raised to `minReplicas`.
    Min,
    /// Capped at `maxReplicas`.
    Max,
    /// Idle queues, scaled to (or kept at) zero.
    Idle,
    /// Scale-down held by the stabilization window.
    Stabilized,
    /// Scale-up limited to one step.
    StepLimited,
    /// Metrics unavailable: size held.
    Held,
    /// Backlog growing: no scale-down.
    BacklogGrowing,
}

impl Rule {
    /// The name used in status and Events.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Fixed => "Fixed",
            Self::Beat => "Beat",
            Self::CronLoad => "CronLoad",
            Self::QueueLoad => "QueueLoad",
            Self::TargetDepth => "TargetDepth",
            Self::Min => "Min",
            Self::Max => "Max",
            Self::Idle => "Idle",
            Self::Stabilized => "Stabilized",
            Self::StepLimited => "StepLimited",
            Self::Held => "Held",
            Self::BacklogGrowing => "BacklogGrowing",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A sizing decision with its explanation.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Replicas to run now.
    pub desired: i32,
    /// What the load alone asked for, after [min, max] (before the behaviour step).
    pub recommendation: i32,
    /// The rule that decided `desired`.
    pub rule: Rule,
    /// Inputs, rule and result in words.
    pub message: String,
    /// The measurements used, if any.
    pub observation: Option<Observation>,
}

impl Decision {
    /// A pool with a fixed size (`spec.replicas`, scale subresource, HPA).
    pub fn fixed(replicas: i32) -> Self {
        Self {
            desired: replicas,
            recommendation: replicas,
            rule: Rule::Fixed,
            message: format!("fixed size: spec.replicas = {replicas}"),
            observation: None,
        }
    }

    /// A Beat pool: exactly one replica.
    pub fn beat() -> Self {
        Self {
            desired: 1,
            recommendation: 1,
            rule: Rule::Beat,
            message: "beat: exactly one replica".to_string(),
            observation: None,
        }
    }

    /// The decision as shown in the pool's status.
    pub fn to_status(&self) -> DecisionStatus {
        DecisionStatus {
            rule: self.rule.as_str().to_string(),
            message: self.message.clone(),
            task_time_ms: self.observation.as_ref().map(|o| round1(o.task_time_ms)),
            depth: self.observation.as_ref().map(|o| o.depth),
            scheduled_per_period: self.observation.as_ref().map(|o| o.scheduled_per_period),
        }
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// `ceil(x)` for a non-negative load, tolerant of floating-point noise just above an integer.
fn ceil_pods(x: f64) -> u64 {
    if !x.is_finite() || x <= 0.0 {
        return 0;
    }
    let c = (x - 1e-9).ceil();
    if c >= u64::MAX as f64 {
        u64::MAX
    } else {
        c.max(0.0) as u64
    }
}

/// Cron load, the seed formula: `ceil(M × T / (c × P))` pods.
pub fn cron_pods(monitors: u64, task_time_ms: f64, processes_per_pod: u32, period_ms: u64) -> u64 {
    let denom = f64::from(processes_per_pod.max(1)) * period_ms.max(1) as f64;
    ceil_pods(monitors as f64 * task_time_ms.max(0.0) / denom)
}

/// The arrivals per second the pool keeps up with: all but a one-off burst (λ − ρ, never
/// negative).
pub fn flow_rate(obs: &Observation) -> f64 {
    (obs.arrival_rate.max(0.0) - obs.one_off_rate).max(0.0)
}

/// Queue load: pods whose processes do the work waiting now and the work arriving over the
/// next `horizon_ms` (D + (λ − ρ)·H tasks of T ms) within the drain target W, and at least
/// the pods the tasks running now occupy (R / c). With H = W this would be "keep up with the
/// arrivals and drain the backlog within W" ((λ − ρ)·T + D·T/W); the shorter default H
/// spends the wait budget: a pool may fall behind a rate for a while and runs at the work's
/// own size with a backlog, as long as what waits is done within W.
pub fn queue_pods(
    obs: &Observation,
    processes_per_pod: u32,
    drain_target_ms: u64,
    horizon_ms: u64,
) -> u64 {
    let t = obs.task_time_ms.max(0.0);
    let w = drain_target_ms.max(1) as f64;
    let h = horizon_ms.min(drain_target_ms) as f64 / 1000.0;
    let busy = (obs.depth as f64 + flow_rate(obs) * h) * t / w;
    let running = obs.in_flight as f64;
    ceil_pods(busy.max(running) / f64::from(processes_per_pod.max(1)))
}

/// KEDA-compatible: `ceil(D / targetDepthPerPod)` pods.
pub fn target_depth_pods(depth: u64, target: u64) -> u64 {
    depth.div_ceil(target.max(1))
}

fn to_i32(x: u64) -> i32 {
    i32::try_from(x).unwrap_or(i32::MAX)
}

/// Decide the size of an autoscaled pool.
pub fn decide(cfg: &PolicyConfig, input: &Input, history: &mut History) -> Decision {
    let min = cfg.min_replicas.max(0);
    let max = cfg.max_replicas.max(min);
    let current = input.current.max(0);

    let Some(obs) = input.observation.clone() else {
        let held = current.clamp(min, max);
        let message = if held == current {
            format!("metrics unavailable: holding {current} pods")
        } else {
            format!("metrics unavailable: holding {current} pods within [{min}, {max}] = {held}")
        };
        return Decision {
            desired: held,
            recommendation: held,
            rule: Rule::Held,
            message,
            observation: None,
        };
    };

    // 1. load
    let c = cfg.processes_per_pod.max(1);
    let t = obs.task_time_ms.max(0.0);
    let cron = cron_pods(obs.scheduled_per_period, t, c, cfg.period_ms);
    let (queue, queue_rule, queue_msg) = match cfg.target_depth_per_pod {
        Some(target) => {
            let pods = target_depth_pods(obs.depth, target)
                .max(ceil_pods(obs.in_flight as f64 / f64::from(c)));
            (
                pods,
                Rule::TargetDepth,
                format!("depth {} / target {target} per pod = {pods}", obs.depth),
            )
        }
        None => {
            let pods = queue_pods(&obs, c, cfg.drain_target_ms, cfg.keep_up_horizon_ms);
            let stayed = if obs.one_off_rate > 0.0 {
                format!(" ({:.1}/s of them in the backlog)", obs.one_off_rate)
            } else {
                String::new()
            };
            let msg = format!(
                "backlog {}, arrivals {:.1}/s{stayed}, T {:.0} ms, drain target {} s, {} running: {pods} pods of {c}",
                obs.depth,
                obs.arrival_rate,
                t,
                cfg.drain_target_ms / 1000,
                obs.in_flight
            );
            (pods, Rule::QueueLoad, msg)
        }
    };
    let cron_msg = format!(
        "formula: {} monitors × {:.0} ms / ({c} × {} ms) = {cron}",
        obs.scheduled_per_period, t, cfg.period_ms
    );
    let (load, mut rule, mut message) = if cron > 0 && cron >= queue {
        (cron, Rule::CronLoad, cron_msg)
    } else {
        (queue, queue_rule, queue_msg)
    };

    // 2. bounds
    let idle = obs.depth == 0 && obs.in_flight == 0 && obs.arrival_rate <= 0.0 && cron == 0;
    let mut load = to_i32(load);
    // due retries and deliveries wait for a worker, not for more tasks: they wake the pool
    if current == 0
        && cron == 0
        && obs.in_flight == 0
        && obs.due == 0
        && obs.depth <= cfg.activation_depth
        && min == 0
    {
        if obs.depth > 0 {
            message = format!(
                "{} waiting, not above activation depth {}: stays at 0",
                obs.depth, cfg.activation_depth
            );
        } else {
            message = "queues idle: stays at 0".to_string();
        }
        rule = Rule::Idle;
        load = 0;
    } else if idle && min == 0 {
        rule = Rule::Idle;
        message =
            "queues idle (no backlog, arrivals, running tasks or schedules): 0 pods".to_string();
    }
    let recommendation = load.clamp(min, max);
    if recommendation > load {
        rule = Rule::Min;
        message = format!("{message}; raised to minReplicas {min}");
    } else if recommendation < load {
        rule = Rule::Max;
        message = format!("{message}; capped at maxReplicas {max}");
    }

    // 3. behaviour
    history.record(
        input.now_ms,
        recommendation,
        cfg.scale_down_stabilization_ms,
    );
    let growing = history.last_depth.is_some_and(|d| obs.depth > d) && obs.depth > 0;
    let last_depth = history.last_depth.replace(obs.depth);
    let desired = if recommendation > current {
        let step = cfg.scale_up_max_step.max(1).max(current);
        let limit = current.saturating_add(step);
        if recommendation > limit {
            rule = Rule::StepLimited;
            message = format!(
                "{message}; scale-up limited to {limit} this step (+max({}, 100 %))",
                cfg.scale_up_max_step
            );
            limit
        } else {
            recommendation
        }
    } else if recommendation < current {
        if growing {
            rule = Rule::BacklogGrowing;
            message = format!(
                "{message}; backlog growing ({} → {}): not scaling down from {current}",
                last_depth.unwrap_or(0),
                obs.depth
            );
            current
        } else {
            let highest = history.highest().unwrap_or(recommendation).clamp(min, max);
            let target = highest.min(current);
            if target > recommendation {
                rule = Rule::Stabilized;
                message = format!(
                    "{message}; scale-down held at {target}: {highest} recommended within the last {} s",
                    cfg.scale_down_stabilization_ms / 1000
                );
            }
            target
        }
    } else {
        current
    };

    Decision {
        desired,
        recommendation,
        rule,
        message,
        observation: Some(obs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn obs(depth: u64, rate: f64, t: f64, m: u64) -> Observation {
        Observation {
            depth,
            due: 0,
            arrival_rate: rate,
            one_off_rate: 0.0,
            in_flight: 0,
            task_time_ms: t,
            task_time_measured: true,
            scheduled_per_period: m,
        }
    }

    fn input(now_ms: u64, current: i32, o: Option<Observation>) -> Input {
        Input {
            now_ms,
            current,
            observation: o,
        }
    }

    fn cfg(min: i32, max: i32) -> PolicyConfig {
        PolicyConfig {
            min_replicas: min,
            max_replicas: max,
            ..PolicyConfig::default()
        }
    }

    #[test]
    fn seed_formula() {
        assert_eq!(cron_pods(10_000, 500.0, 5, 60_000), 17);
        assert_eq!(cron_pods(600, 500.0, 5, 60_000), 1);
        assert_eq!(cron_pods(601, 500.0, 5, 60_000), 2);
        assert_eq!(cron_pods(0, 500.0, 5, 60_000), 0);
    }

    #[test]
    fn cron_decision_explains_the_formula() {
        let mut h = History::default();
        let d = decide(
            &cfg(0, 100),
            &input(0, 17, Some(obs(0, 0.0, 500.0, 10_000))),
            &mut h,
        );
        assert_eq!(d.desired, 17);
        assert_eq!(d.rule, Rule::CronLoad);
        assert_eq!(
            d.message,
            "formula: 10000 monitors × 500 ms / (5 × 60000 ms) = 17"
        );
        assert_eq!(d.to_status().rule, "CronLoad");
    }

    #[test]
    fn queue_load_keeps_up_and_drains() {
        // 10 tasks/s × 500 ms = 5 busy processes; 1200 waiting × 500 ms / 60 s = 10 more: 15 / 5 = 3 pods
        let o = obs(1200, 10.0, 500.0, 0);
        assert_eq!(queue_pods(&o, 5, 60_000, 60_000), 3);
        let mut h = History::default();
        let d = decide(&cfg(0, 10), &input(0, 3, Some(o)), &mut h);
        assert_eq!((d.desired, d.rule), (3, Rule::QueueLoad));
        assert!(d.message.contains("backlog 1200"), "{}", d.message);
    }

    #[test]
    fn the_wait_budget_is_spent_not_an_empty_queue() {
        // 20 tasks/s of 500 ms is 10 busy processes. With a 60 s drain target the pool need not
        // keep up at once: the work waiting plus the next 15 s of arrivals, done within 60 s,
        // is (D + 20 × 15) × 0.5 s / 60 s processes, so 1 pod (5 processes) serves while
        // D ≤ 300 (a wait of at most 30 s at 10 tasks/s), and 2 beyond.
        let cfg = cfg(0, 10);
        let pods = |depth| {
            decide(
                &cfg,
                &input(0, 1, Some(obs(depth, 20.0, 500.0, 0))),
                &mut History::default(),
            )
            .desired
        };
        assert_eq!(pods(0), 1);
        assert_eq!(pods(300), 1);
        assert_eq!(pods(301), 2);
        // a horizon as long as the target is the old rule: keep up with all arrivals
        assert_eq!(queue_pods(&obs(0, 20.0, 500.0, 0), 5, 60_000, 60_000), 2);
    }

    #[test]
    fn a_burst_is_backlog_not_also_arrivals() {
        // 3,000 tasks of 300 ms enqueued at once: over the 10 s window that is 300/s
        // arriving, and all 300/s stayed in the backlog. Draining 3,000 × 300 ms within 60 s
        // takes 15 processes: 3 pods of 5 (not 21 from adding 300/s × 300 ms = 90 more).
        let burst = Observation {
            one_off_rate: 300.0,
            ..obs(3_000, 300.0, 300.0, 0)
        };
        assert_eq!(queue_pods(&burst, 5, 60_000, 60_000), 3);
        let d = decide(
            &cfg(0, 30),
            &input(0, 3, Some(burst)),
            &mut History::default(),
        );
        assert_eq!((d.desired, d.rule), (3, Rule::QueueLoad), "{}", d.message);
        assert!(
            d.message
                .contains("arrivals 300.0/s (300.0/s of them in the backlog)"),
            "{}",
            d.message
        );
        // a steady 10/s on top of the burst is still kept up with: 3 + 15 = 18 processes
        let both = Observation {
            one_off_rate: 300.0,
            ..obs(3_000, 310.0, 300.0, 0)
        };
        assert_eq!(queue_pods(&both, 5, 60_000, 60_000), 4);
    }

    #[test]
    fn running_tasks_hold_their_pods() {
        // one 75 s task running, nothing waiting or arriving: its pod stays
        let o = Observation {
            in_flight: 1,
            ..obs(0, 0.0, 75_000.0, 0)
        };
        let c = PolicyConfig {
            scale_down_stabilization_ms: 0,
            ..cfg(0, 10)
        };
        let d = decide(&c, &input(0, 1, Some(o)), &mut History::default());
        assert_eq!((d.desired, d.rule), (1, Rule::QueueLoad), "{}", d.message);
        // 12 running in pods of 5: 3 pods, whatever the (short) backlog says
        let o = Observation {
            in_flight: 12,
            ..obs(2, 0.0, 100.0, 0)
        };
        let d = decide(&c, &input(0, 4, Some(o)), &mut History::default());
        assert_eq!(d.desired, 3, "{}", d.message);
    }

    #[test]
    fn keda_target_depth_mode() {
        let c = PolicyConfig {
            target_depth_per_pod: Some(100),
            ..cfg(0, 50)
        };
        let mut h = History::default();
        let d = decide(&c, &input(0, 10, Some(obs(4_200, 0.0, 1.0, 0))), &mut h);
        assert_eq!(
            (d.desired, d.rule),
            (20, Rule::StepLimited),
            "{}",
            d.message
        );
        assert_eq!(d.recommendation, 42);
        assert!(d.message.contains("depth 4200 / target 100 per pod = 42"));
    }

    #[test]
    fn scale_up_is_immediate_but_bounded() {
        let mut h = History::default();
        let d = decide(
            &cfg(0, 100),
            &input(0, 2, Some(obs(100_000, 0.0, 500.0, 0))),
            &mut h,
        );
        assert_eq!(d.desired, 6, "2 + max(4, 2)");
        let d = decide(
            &cfg(0, 100),
            &input(1_000, 6, Some(obs(100_000, 0.0, 500.0, 0))),
            &mut h,
        );
        assert_eq!(d.desired, 12, "6 + max(4, 6)");
    }

    #[test]
    fn scale_down_waits_for_the_window() {
        let c = PolicyConfig {
            scale_down_stabilization_ms: 10_000,
            ..cfg(0, 100)
        };
        let mut h = History::default();
        let busy = obs(6_000, 0.0, 500.0, 0); // 6000 × 500 / 60000 = 50 processes = 10 pods
        assert_eq!(decide(&c, &input(0, 10, Some(busy)), &mut h).desired, 10);
        let quiet = obs(0, 1.0, 500.0, 0); // 0.5 busy processes = 1 pod
        for t in (1_000..=10_000).step_by(1_000) {
            let d = decide(&c, &input(t, 10, Some(quiet.clone())), &mut h);
            assert_eq!(
                (d.desired, d.rule),
                (10, Rule::Stabilized),
                "t={t}: {}",
                d.message
            );
            // the hold says when it ends, so an idle pool can come back by itself
            assert_eq!(h.hold_ends_ms(10_000), Some(10_001), "t={t}");
        }
        let d = decide(&c, &input(10_001, 10, Some(quiet)), &mut h);
        assert_eq!((d.desired, d.rule), (1, Rule::QueueLoad), "{}", d.message);
    }

    #[test]
    fn scale_to_zero_only_when_allowed_and_idle() {
        let c = PolicyConfig {
            scale_down_stabilization_ms: 0,
            ..cfg(0, 10)
        };
        let mut h = History::default();
        let d = decide(&c, &input(0, 3, Some(obs(0, 0.0, 500.0, 0))), &mut h);
        assert_eq!((d.desired, d.rule), (0, Rule::Idle));
        let c1 = PolicyConfig {
            scale_down_stabilization_ms: 0,
            ..cfg(1, 10)
        };
        let d = decide(
            &c1,
            &input(0, 3, Some(obs(0, 0.0, 500.0, 0))),
            &mut History::default(),
        );
        assert_eq!((d.desired, d.rule), (1, Rule::Min));
    }

    #[test]
    fn activation_depth_gates_the_start_from_zero() {
        let c = PolicyConfig {
            activation_depth: 5,
            ..cfg(0, 10)
        };
        let mut h = History::default();
        let d = decide(&c, &input(0, 0, Some(obs(5, 0.0, 500.0, 0))), &mut h);
        assert_eq!((d.desired, d.rule), (0, Rule::Idle), "{}", d.message);
        let d = decide(&c, &input(1, 0, Some(obs(6, 0.0, 500.0, 0))), &mut h);
        assert_eq!(d.desired, 1);
        // once running, a small backlog keeps one pod
        let d = decide(&c, &input(2, 1, Some(obs(3, 0.0, 500.0, 0))), &mut h);
        assert_eq!(d.desired, 1);
    }

    /// Due retries and due deliveries wait for a worker, not for more tasks: they start a
    /// pool at zero whatever the activation depth (else one webhook would wait forever).
    #[test]
    fn due_work_starts_a_pool_at_zero_below_the_activation_depth() {
        let c = PolicyConfig {
            activation_depth: 5,
            ..cfg(0, 10)
        };
        let mut h = History::default();
        let due = Observation {
            due: 1,
            ..obs(1, 0.0, 500.0, 0)
        };
        let d = decide(&c, &input(0, 0, Some(due)), &mut h);
        assert_eq!((d.desired, d.rule), (1, Rule::QueueLoad), "{}", d.message);
        assert!(d.message.contains("backlog 1"), "{}", d.message);
        // the same backlog of tasks that merely wait stays below the activation depth
        let d = decide(&c, &input(1, 0, Some(obs(1, 0.0, 500.0, 0))), &mut h);
        assert_eq!((d.desired, d.rule), (0, Rule::Idle), "{}", d.message);
    }

    #[test]
    fn metrics_outage_holds_the_size() {
        let mut h = History::default();
        let d = decide(&cfg(0, 10), &input(0, 7, None), &mut h);
        assert_eq!((d.desired, d.rule), (7, Rule::Held));
        assert!(d.message.contains("metrics unavailable"));
        // never to zero on an outage, even with min 0
        let d = decide(&cfg(0, 10), &input(0, 1, None), &mut h);
        assert_eq!(d.desired, 1);
    }

    #[test]
    fn growing_backlog_blocks_scale_down() {
        let c = PolicyConfig {
            scale_down_stabilization_ms: 0,
            ..cfg(0, 100)
        };
        let mut h = History::default();
        decide(&c, &input(0, 8, Some(obs(100, 0.0, 100.0, 0))), &mut h);
        let d = decide(&c, &input(1_000, 8, Some(obs(120, 0.0, 100.0, 0))), &mut h);
        assert_eq!(
            (d.desired, d.rule),
            (8, Rule::BacklogGrowing),
            "{}",
            d.message
        );
    }

    fn arb_obs() -> impl Strategy<Value = Observation> {
        (
            0u64..200_000,
            0.0f64..500.0,
            0u64..50,
            1.0f64..10_000.0,
            0u64..100_000,
        )
            .prop_map(|(depth, rate, in_flight, t, m)| Observation {
                depth,
                due: 0,
                arrival_rate: rate,
                one_off_rate: 0.0,
                in_flight,
                task_time_ms: t,
                task_time_measured: true,
                scheduled_per_period: m,
            })
    }

    fn arb_cfg() -> impl Strategy<Value = PolicyConfig> {
        (
            0i32..5,
            1i32..200,
            1u32..16,
            0u64..600,
            proptest::option::of(1u64..1000),
            1i32..10,
        )
            .prop_map(|(min, span, c, window_s, target, step)| PolicyConfig {
                min_replicas: min,
                max_replicas: min + span,
                processes_per_pod: c,
                period_ms: DEFAULT_PERIOD_MS,
                drain_target_ms: 60_000,
                keep_up_horizon_ms: KEEP_UP_HORIZON_MS,
                target_depth_per_pod: target,
                activation_depth: 0,
                scale_down_stabilization_ms: window_s * 1000,
                scale_up_max_step: step,
            })
    }

    proptest! {
        #[test]
        fn cron_pods_is_monotone_in_m_and_t(m in 0u64..1_000_000, dm in 0u64..1000, t in 0.0f64..100_000.0, dt in 0.0f64..1000.0, c in 1u32..64) {
            prop_assert!(cron_pods(m + dm, t, c, 60_000) >= cron_pods(m, t, c, 60_000));
            prop_assert!(cron_pods(m, t + dt, c, 60_000) >= cron_pods(m, t, c, 60_000));
            prop_assert!(cron_pods(m, t, c + 1, 60_000) <= cron_pods(m, t, c, 60_000));
        }

        #[test]
        fn never_outside_min_max(c in arb_cfg(), current in 0i32..400, steps in proptest::collection::vec(proptest::option::of(arb_obs()), 1..20)) {
            let mut h = History::default();
            let mut cur = current.clamp(c.min_replicas, c.max_replicas);
            for (i, o) in steps.into_iter().enumerate() {
                let d = decide(&c, &input(i as u64 * 1000, cur, o), &mut h);
                prop_assert!(d.desired >= c.min_replicas && d.desired <= c.max_replicas, "{} not in [{}, {}]: {}", d.desired, c.min_replicas, c.max_replicas, d.message);
                cur = d.desired;
            }
        }

        #[test]
        fn never_below_current_while_the_backlog_grows(c in arb_cfg(), start in 1u64..10_000, growth in proptest::collection::vec(1u64..500, 1..30), t in 1.0f64..2000.0) {
            let mut h = History::default();
            let mut cur = c.min_replicas.max(1).min(c.max_replicas);
            let mut depth = start;
            for (i, g) in growth.into_iter().enumerate() {
                depth += g;
                let d = decide(&c, &input(i as u64 * 1000, cur, Some(obs(depth, 0.0, t, 0))), &mut h);
                if i > 0 {
                    prop_assert!(d.desired >= cur, "shrank {cur} → {} while depth grew to {depth}: {}", d.desired, d.message);
                }
                cur = d.desired;
            }
        }

        #[test]
        fn scale_up_is_bounded_by_one_step(c in arb_cfg(), current in 0i32..100, o in arb_obs()) {
            let cur = current.clamp(c.min_replicas, c.max_replicas);
            let d = decide(&c, &input(0, cur, Some(o)), &mut History::default());
            prop_assert!(d.desired <= cur + c.scale_up_max_step.max(cur).max(1));
        }

        #[test]
        fn outage_never_changes_a_valid_size(c in arb_cfg(), current in 0i32..400) {
            let cur = current.clamp(c.min_replicas, c.max_replicas);
            let d = decide(&c, &input(0, cur, None), &mut History::default());
            prop_assert_eq!(d.desired, cur);
            prop_assert_eq!(d.rule, Rule::Held);
        }

        #[test]
        fn no_flapping_on_a_noisy_steady_input(noise in proptest::collection::vec(-0.2f64..0.2, 600), depth in 100u64..5000, t in 50.0f64..2000.0) {
            // 1 decision per second, 60 s window: the size may move a few times, but it must not
            // go up and down repeatedly while the load only jitters around a steady level
            let c = PolicyConfig { scale_down_stabilization_ms: 60_000, ..cfg(0, 1000) };
            let mut h = History::default();
            let mut cur = 0;
            let mut changes = 0;
            let mut downs = 0;
            for (i, n) in noise.iter().enumerate() {
                let d = ((depth as f64) * (1.0 + n)) as u64;
                let dec = decide(&c, &input(i as u64 * 1000, cur, Some(obs(d, 10.0, t, 0))), &mut h);
                if i >= 60 && dec.desired != cur {
                    changes += 1;
                    if dec.desired < cur { downs += 1; }
                }
                cur = dec.desired;
            }
            prop_assert!(downs <= 600 / 60, "{downs} scale-downs in 600 s with a 60 s window");
            prop_assert!(changes <= 2 * (600 / 60) + 2, "{changes} size changes on a steady input");
        }
    }
}
