//! The capacity planner behind `funcscale-operator capacity`: how many pods a cron load needs,
//! and what one pod can do. Exact integer arithmetic on the policy's formula
//! `pods = ceil(M × T / (c × P))`.

use serde::Serialize;

/// Baseline task time of the planning table's percentage columns.
pub const BASELINE_TASK_MS: u64 = 500;
/// Monitor counts of the default planning table.
pub const TABLE_MONITORS: [u64; 5] = [1_000, 5_000, 10_000, 50_000, 100_000];
/// Task times of the default planning table.
pub const TABLE_TASK_MS: [u64; 8] = [100, 200, 300, 500, 800, 1_000, 2_000, 5_000];

/// Why a plan cannot be made; each names the flag at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CapacityError {
    /// A divisor is zero.
    #[error("{flag} must be at least 1 (got 0)")]
    Zero {
        /// The flag.
        flag: &'static str,
    },
    /// The result does not fit.
    #[error("overflow: {what} would exceed 64 bits; lower --monitors or --task-ms")]
    Overflow {
        /// What overflowed.
        what: &'static str,
    },
}

/// One capacity plan.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Scheduled executions per period (M).
    pub monitors: u64,
    /// Task time in ms (T).
    pub task_ms: u64,
    /// Processes per pod (c).
    pub processes: u64,
    /// Period in ms (P).
    pub period_ms: u64,
    /// Pods needed: `ceil(M × T / (c × P))`.
    pub pods: u64,
    /// Executions one pod completes per period: `floor(c × P / T)`.
    pub per_pod_capacity: u64,
    /// Executions one process completes per period: `floor(P / T)`.
    pub per_process_capacity: u64,
    /// Share of the planned pods' time that the load keeps busy, in percent (0 with no load).
    pub utilization_percent: f64,
}

/// Plan for `monitors` executions of `task_ms` each per `period_ms`, with `processes` per pod.
pub fn plan(
    monitors: u64,
    task_ms: u64,
    processes: u64,
    period_ms: u64,
) -> Result<Plan, CapacityError> {
    if task_ms == 0 {
        return Err(CapacityError::Zero { flag: "--task-ms" });
    }
    if processes == 0 {
        return Err(CapacityError::Zero {
            flag: "--processes",
        });
    }
    if period_ms == 0 {
        return Err(CapacityError::Zero {
            flag: "--period-ms",
        });
    }
    let work = u128::from(monitors) * u128::from(task_ms);
    let pod_time = u128::from(processes) * u128::from(period_ms);
    let pods = u64::try_from(work.div_ceil(pod_time)).map_err(|_| CapacityError::Overflow {
        what: "the pods needed",
    })?;
    let per_pod =
        u64::try_from(pod_time / u128::from(task_ms)).map_err(|_| CapacityError::Overflow {
            what: "one pod's capacity",
        })?;
    let utilization_percent = if pods == 0 {
        0.0
    } else {
        (work as f64 / (pods as f64 * pod_time as f64) * 1000.0).round() / 10.0
    };
    Ok(Plan {
        monitors,
        task_ms,
        processes,
        period_ms,
        pods,
        per_pod_capacity: per_pod,
        per_process_capacity: period_ms / task_ms,
        utilization_percent,
    })
}

/// The plan in words.
pub fn render_plan(p: &Plan) -> String {
    format!(
        "pods needed: {pods}\n  formula: {m} monitors × {t} ms / ({c} × {per} ms) = {pods}\n\
         one pod's capacity: {cap} executions per {per} ms ({c} processes × {pp} each)\n\
         utilization at {pods} pods: {u:.1} %\n",
        pods = p.pods,
        m = p.monitors,
        t = p.task_ms,
        c = p.processes,
        per = p.period_ms,
        cap = p.per_pod_capacity,
        pp = p.per_process_capacity,
        u = p.utilization_percent,
    )
}

/// One row of the planning table: a task time, one pod's capacity, and the pods for each M.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TableRow {
    /// Task time in ms.
    pub task_ms: u64,
    /// Executions one pod completes per period.
    pub per_pod_capacity: u64,
    /// One pod's capacity as a percentage of the capacity at the baseline task time.
    pub capacity_vs_baseline_percent: f64,
    /// Pods needed (and so cost) as a percentage of the pods at the baseline task time.
    pub pods_vs_baseline_percent: f64,
    /// Pods needed for each monitor count, in the order of the table's monitors.
    pub pods: Vec<u64>,
}

/// The planning table over `monitors` × `task_ms`.
pub fn table(
    monitors: &[u64],
    task_ms: &[u64],
    processes: u64,
    period_ms: u64,
) -> Result<Vec<TableRow>, CapacityError> {
    task_ms
        .iter()
        .map(|&t| {
            let row = plan(0, t, processes, period_ms)?;
            let pods = monitors
                .iter()
                .map(|&m| plan(m, t, processes, period_ms).map(|p| p.pods))
                .collect::<Result<Vec<_>, _>>()?;
            let pct = |x: f64| (x * 1000.0).round() / 10.0;
            Ok(TableRow {
                task_ms: t,
                per_pod_capacity: row.per_pod_capacity,
                capacity_vs_baseline_percent: pct(BASELINE_TASK_MS as f64 / t as f64),
                pods_vs_baseline_percent: pct(t as f64 / BASELINE_TASK_MS as f64),
                pods,
            })
        })
        .collect()
}

/// The planning table as aligned text.
pub fn render_table(monitors: &[u64], rows: &[TableRow], processes: u64, period_ms: u64) -> String {
    let mut header = vec![
        "task ms".to_string(),
        format!("pod capacity/{period_ms}ms"),
        format!("capacity vs {BASELINE_TASK_MS}ms"),
        format!("pods vs {BASELINE_TASK_MS}ms"),
    ];
    header.extend(monitors.iter().map(|m| format!("pods @ M={m}")));
    let mut lines = vec![header];
    for r in rows {
        let mut line = vec![
            r.task_ms.to_string(),
            r.per_pod_capacity.to_string(),
            format!("{:.1} %", r.capacity_vs_baseline_percent),
            format!("{:.1} %", r.pods_vs_baseline_percent),
        ];
        line.extend(r.pods.iter().map(u64::to_string));
        lines.push(line);
    }
    let widths: Vec<usize> = (0..lines[0].len())
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = format!(
        "capacity plan: {processes} processes per pod, period {period_ms} ms, pods = ceil(M × T / (c × P))\n"
    );
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:>w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn seed_examples() {
        let p = plan(10_000, 500, 5, 60_000).unwrap();
        assert_eq!(p.pods, 17);
        assert_eq!(p.per_pod_capacity, 600);
        assert_eq!(plan(1, 800, 5, 60_000).unwrap().per_pod_capacity, 375);
        assert_eq!(plan(0, 500, 5, 60_000).unwrap().pods, 0);
    }

    #[test]
    fn zero_divisors_name_the_flag() {
        assert_eq!(
            plan(1, 0, 5, 60_000).unwrap_err().to_string(),
            "--task-ms must be at least 1 (got 0)"
        );
        assert_eq!(
            plan(1, 1, 0, 60_000).unwrap_err(),
            CapacityError::Zero {
                flag: "--processes"
            }
        );
        assert_eq!(
            plan(1, 1, 5, 0).unwrap_err(),
            CapacityError::Zero {
                flag: "--period-ms"
            }
        );
    }

    #[test]
    fn overflow_is_an_error() {
        assert!(matches!(
            plan(u64::MAX, u64::MAX, 1, 1),
            Err(CapacityError::Overflow { .. })
        ));
    }

    #[test]
    fn table_rows_follow_the_baseline() {
        let rows = table(&[10_000], &[500, 800], 5, 60_000).unwrap();
        assert_eq!(rows[0].pods, vec![17]);
        assert_eq!(rows[0].capacity_vs_baseline_percent, 100.0);
        assert_eq!(rows[1].per_pod_capacity, 375);
        assert_eq!(rows[1].capacity_vs_baseline_percent, 62.5);
        assert_eq!(rows[1].pods_vs_baseline_percent, 160.0);
        assert_eq!(rows[1].pods, vec![27]);
        let text = render_table(&[10_000], &rows, 5, 60_000);
        assert!(text.contains("pods @ M=10000"), "{text}");
    }

    proptest! {
        #[test]
        fn plan_agrees_with_the_policy_formula(m in 0u64..10_000_000, t in 1u64..100_000, c in 1u64..64) {
            let p = plan(m, t, c, 60_000).unwrap();
            prop_assert_eq!(p.pods, crate::policy::cron_pods(m, t as f64, c as u32, 60_000));
            // the planned pods are enough, and one fewer would not be
            prop_assert!(u128::from(p.pods) * u128::from(c) * 60_000 >= u128::from(m) * u128::from(t));
            if p.pods > 0 {
                prop_assert!(u128::from(p.pods - 1) * u128::from(c) * 60_000 < u128::from(m) * u128::from(t));
            }
        }
    }
}
