//! The command line of `funcscale-sim` (the binary only parses and prints).

use clap::Parser;
use funcscale_operator::policy::{DEFAULT_PROCESSES, PolicyConfig};

use crate::{SimConfig, Trace};

/// Grade funcscale's policy on load traces (built-in, or CSV files: --trace) against
/// yardsticks computed in the same run: the work bound, KEDA tuned over a grid of its
/// settings, KEDA with its defaults, and an HPA on CPU.
#[derive(Parser, Debug)]
#[command(name = "funcscale-sim", version, about)]
pub struct Args {
    /// A trace file (CSV: `second,arrivals,task_ms[,scheduled_per_minute]`, one row per
    /// group of tasks arriving in a second; see docs/keda-comparison.md, "Traces from files"). Repeat for several.
    /// Without it the built-in traces run (steady, bursty, diurnal, cron-spiky).
    #[arg(long = "trace", value_name = "FILE")]
    pub traces: Vec<std::path::PathBuf>,
    /// Run the built-in traces too when --trace is given.
    #[arg(long)]
    pub builtin: bool,
    /// Most pods any policy may run.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(i32).range(1..=10000))]
    pub max_replicas: i32,
    /// Seconds a new pod needs before it takes tasks.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub pod_start_s: u64,
    /// Processes per pod.
    #[arg(long, default_value_t = DEFAULT_PROCESSES, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub processes: u32,
    /// The pool's drain target in seconds: funcscale's target, and the p95 wait every
    /// policy is held to (the tuned KEDA is the cheapest setting that meets it).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub drain_target_s: u64,
    /// The queue's task-time hint in ms (`FuncQueue.spec.taskTimeMs`): what funcscale
    /// assumes until tasks finish; it then uses the measured time.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub task_ms_hint: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run `simulate` and return what to print; a trace file that cannot be read or parsed is
/// an error naming the file, line and column.
pub fn simulate(args: &Args) -> Result<String, String> {
    let cfg = SimConfig {
        pod_start_s: args.pod_start_s,
        processes_per_pod: args.processes,
        task_ms_hint: args.task_ms_hint as f64,
        ..SimConfig::default()
    };
    let policy = PolicyConfig {
        min_replicas: 0,
        max_replicas: args.max_replicas,
        processes_per_pod: args.processes,
        drain_target_ms: args.drain_target_s * 1000,
        ..PolicyConfig::default()
    };
    let mut traces = Vec::new();
    if args.traces.is_empty() || args.builtin {
        traces.extend(crate::standard_traces());
    }
    for path in &args.traces {
        traces.push(Trace::from_file(path).map_err(|e| format!("--trace: {e}"))?);
    }
    let comparisons: Vec<_> = traces
        .iter()
        .map(|t| crate::compare(t, &cfg, &policy))
        .collect();
    if args.json {
        return Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(&comparisons).expect("JSON")
        ));
    }
    Ok(crate::render(&comparisons))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Args, simulate};

    fn simulate_args(args: &[&str]) -> Args {
        Args::try_parse_from([&["funcscale-sim"], args].concat()).expect("parses")
    }

    #[test]
    fn simulate_grades_a_trace_file_against_the_yardsticks() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/traces/example.csv");
        let out = simulate(&simulate_args(&["--trace", example])).unwrap();
        for want in [
            "example.csv (wait target 60 s)",
            "work bound",
            "funcscale",
            "tuned keda",
            "keda-defaults",
            "hpa-cpu",
            "goals: p95 within target",
        ] {
            assert!(out.contains(want), "{want:?} missing:\n{out}");
        }
        assert!(
            !out.contains("steady"),
            "built-ins only with --builtin:\n{out}"
        );
        let json = simulate(&simulate_args(&["--trace", example, "--json"])).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 1);
        assert!(v[0]["workBound"].as_u64().unwrap() > 0);
    }

    #[test]
    fn simulate_names_the_file_and_line_of_a_bad_trace() {
        let dir = std::env::temp_dir().join(format!("funcscale-sim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.csv");
        std::fs::write(&bad, "second,arrivals,task_ms\n0,5,300\n1,five,300\n").unwrap();
        let e = simulate(&simulate_args(&["--trace", bad.to_str().unwrap()]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--trace: trace ") && e.contains("bad.csv line 3: arrivals"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
