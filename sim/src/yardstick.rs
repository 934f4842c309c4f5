//! Yardsticks a policy is graded against on each trace, computed in the same run: the work
//! bound (no policy can spend fewer pod-seconds and run every task), KEDA tuned over a grid of
//! its settings (the best a careful KEDA user could do), KEDA with its defaults, and an HPA on
//! CPU.

use funcscale_operator::policy::PolicyConfig;

use super::{Funcscale, HpaCpu, Keda, KedaSettings, Report, SimConfig, Trace, simulate};

/// The KEDA settings tried for the tuned KEDA: every combination of these `listLength`,
/// `pollingInterval` (s) and `cooldownPeriod` (s) values, with the HPA's defaults.
pub const KEDA_GRID: (&[u32], &[u64], &[u64]) = (
    &[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000],
    &[5, 15, 30],
    &[30, 60, 120, 300],
);

/// Pod-seconds no policy can go below on `trace`: every task's run time, spread over the
/// processes of a pod, `ceil(Σ task time / processes per pod)`.
pub fn work_bound(trace: &Trace, cfg: &SimConfig) -> u64 {
    (trace.work_ms() as f64 / 1000.0 / f64::from(cfg.processes_per_pod.max(1))).ceil() as u64
}

/// KEDA tuned for `trace`: of the [`KEDA_GRID`] settings, the one with the fewest pod-seconds
/// whose p95 wait is within `wait_target_s`; when none is, the one with the lowest p95 wait.
/// Returns its report and whether it met the target.
pub fn tuned_keda(
    trace: &Trace,
    cfg: &SimConfig,
    max_replicas: i32,
    wait_target_s: f64,
) -> (Report, bool) {
    let (lengths, polls, cooldowns) = KEDA_GRID;
    let grid: Vec<KedaSettings> = lengths
        .iter()
        .flat_map(|&list_length| {
            polls.iter().flat_map(move |&polling_s| {
                cooldowns.iter().map(move |&cooldown_s| KedaSettings {
                    list_length,
                    polling_s,
                    cooldown_s,
                })
            })
        })
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = grid.len().div_ceil(threads);
    let reports: Vec<Report> = std::thread::scope(|s| {
        let handles: Vec<_> = grid
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|k| simulate(trace, &mut Keda::with(*k, max_replicas), cfg))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("simulation thread"))
            .collect()
    });
    let best_meeting = reports
        .iter()
        .filter(|r| r.p95_wait_s <= wait_target_s)
        .min_by_key(|r| (r.pod_seconds, r.scale_events));
    match best_meeting {
        Some(r) => (r.clone(), true),
        None => {
            let fastest = reports
                .iter()
                .min_by(|a, b| a.p95_wait_s.total_cmp(&b.p95_wait_s))
                .expect("the grid is not empty");
            (fastest.clone(), false)
        }
    }
}

/// The goals a policy is held to on a trace (issue: the scaling policy against a yardstick).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Goals {
    /// p95 wait within the pool's drain target.
    pub p95_within_target: bool,
    /// Pod-seconds / work bound.
    pub bound_ratio: f64,
    /// Pod-seconds ≤ 1.5 × the work bound.
    pub within_1_5_bound: bool,
    /// Fewer pod-seconds than the tuned KEDA at an equal or lower p95 wait.
    pub cheaper_than_tuned_keda: bool,
    /// No more scale changes than the tuned KEDA.
    pub calmer_than_tuned_keda: bool,
}

/// funcscale and the yardsticks on one trace.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Comparison {
    /// Trace name.
    pub trace: String,
    /// The wait target (the pool's drain target), in seconds.
    pub wait_target_s: f64,
    /// Pod-seconds no policy can go below.
    pub work_bound: u64,
    /// funcscale's policy.
    pub funcscale: Report,
    /// KEDA at the best settings of the grid.
    pub tuned_keda: Report,
    /// Whether any KEDA setting of the grid met the wait target.
    pub tuned_keda_met_target: bool,
    /// KEDA at its defaults.
    pub keda_defaults: Report,
    /// An HPA on CPU (80 %, min 1).
    pub hpa_cpu: Report,
    /// funcscale against the goals.
    pub goals: Goals,
}

/// Run funcscale (with `policy`) and every yardstick on `trace`.
pub fn compare(trace: &Trace, cfg: &SimConfig, policy: &PolicyConfig) -> Comparison {
    let max = policy.max_replicas;
    let wait_target_s = policy.drain_target_ms as f64 / 1000.0;
    let funcscale = simulate(trace, &mut Funcscale::new(policy.clone()), cfg);
    let (tuned_keda, tuned_keda_met_target) = tuned_keda(trace, cfg, max, wait_target_s);
    let keda_defaults = simulate(trace, &mut Keda::new(max), cfg);
    let hpa_cpu = simulate(trace, &mut HpaCpu::new(max), cfg);
    let work_bound = work_bound(trace, cfg);
    let bound_ratio = funcscale.pod_seconds as f64 / work_bound.max(1) as f64;
    let goals = Goals {
        p95_within_target: funcscale.p95_wait_s <= wait_target_s,
        bound_ratio: (bound_ratio * 100.0).round() / 100.0,
        within_1_5_bound: bound_ratio <= 1.5,
        cheaper_than_tuned_keda: funcscale.pod_seconds < tuned_keda.pod_seconds
            && funcscale.p95_wait_s <= tuned_keda.p95_wait_s,
        calmer_than_tuned_keda: funcscale.scale_events <= tuned_keda.scale_events,
    };
    Comparison {
        trace: trace.name.clone(),
        wait_target_s,
        work_bound,
        funcscale,
        tuned_keda,
        tuned_keda_met_target,
        keda_defaults,
        hpa_cpu,
        goals,
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "NO" }
}

/// The comparisons as a table, one block per trace, with the goals under it.
pub fn render(comparisons: &[Comparison]) -> String {
    let mut out = format!(
        "{:<30} {:>11} {:>7} {:>6} {:>6} {:>6} {:>5} {:>7} {:>5}\n",
        "scaler", "pod-seconds", "×bound", "p50 s", "p95 s", "max s", "peak", "scales", "undone"
    );
    for c in comparisons {
        out.push_str(&format!(
            "── {} (wait target {} s) ──\n",
            c.trace, c.wait_target_s
        ));
        out.push_str(&format!(
            "{:<30} {:>11} {:>7}\n",
            "work bound", c.work_bound, "1.00"
        ));
        let tuned_name = if c.tuned_keda_met_target {
            format!("tuned {}", c.tuned_keda.scaler)
        } else {
            format!("tuned {} (missed)", c.tuned_keda.scaler)
        };
        for (name, r) in [
            ("funcscale".to_string(), &c.funcscale),
            (tuned_name, &c.tuned_keda),
            ("keda-defaults".to_string(), &c.keda_defaults),
            ("hpa-cpu".to_string(), &c.hpa_cpu),
        ] {
            out.push_str(&format!(
                "{:<30} {:>11} {:>7.2} {:>6} {:>6} {:>6} {:>5} {:>7} {:>5}\n",
                name,
                r.pod_seconds,
                r.pod_seconds as f64 / c.work_bound.max(1) as f64,
                r.p50_wait_s,
                r.p95_wait_s,
                r.max_wait_s,
                r.peak_pods,
                r.scale_events,
                r.reversals,
            ));
        }
        let g = &c.goals;
        out.push_str(&format!(
            "goals: p95 within target {}; ≤ 1.5× work bound {} ({:.2}×); fewer pod-seconds than tuned KEDA at ≤ its p95 {}; no more scale changes than tuned KEDA {}\n",
            yes(g.p95_within_target),
            yes(g.within_1_5_bound),
            g.bound_ratio,
            yes(g.cheaper_than_tuned_keda),
            yes(g.calmer_than_tuned_keda),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Row;

    fn bursty_short() -> Trace {
        let rows = (0..1200u64)
            .map(|second| Row {
                second,
                arrivals: if second % 300 < 20 { 60 } else { 2 },
                task_ms: 400 + (second % 7) as u32 * 50,
                scheduled_per_minute: None,
            })
            .collect();
        Trace::new("bursty-short", rows)
    }

    #[test]
    fn no_scaler_goes_below_the_work_bound() {
        let trace = bursty_short();
        let cfg = SimConfig::default();
        let policy = PolicyConfig {
            min_replicas: 0,
            max_replicas: 100,
            ..PolicyConfig::default()
        };
        let c = compare(&trace, &cfg, &policy);
        for r in [&c.funcscale, &c.tuned_keda, &c.keda_defaults, &c.hpa_cpu] {
            assert!(
                r.pod_seconds >= c.work_bound,
                "{} under the bound: {r:?}",
                r.scaler
            );
            assert_eq!(r.completed, r.arrived, "{r:?}");
        }
        assert_eq!(
            c.work_bound,
            (trace.work_ms() as f64 / 5000.0).ceil() as u64
        );
    }

    #[test]
    fn tuned_keda_is_the_cheapest_grid_point_meeting_the_target() {
        let trace = bursty_short();
        let cfg = SimConfig::default();
        let (tuned, met) = tuned_keda(&trace, &cfg, 100, 60.0);
        assert!(met && tuned.p95_wait_s <= 60.0, "{tuned:?}");
        // no grid point meeting the target is cheaper, and the defaults are one of them
        let defaults = simulate(&trace, &mut Keda::new(100), &cfg);
        if defaults.p95_wait_s <= 60.0 {
            assert!(
                tuned.pod_seconds <= defaults.pod_seconds,
                "{tuned:?} vs {defaults:?}"
            );
        }
        // an impossible target is reported as missed, with the fastest setting
        let (fastest, met) = tuned_keda(&trace, &cfg, 100, -1.0);
        assert!(!met);
        assert!(fastest.p95_wait_s <= tuned.p95_wait_s);
    }
}
