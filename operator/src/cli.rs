//! Command-line interface of `funcscale-operator` (the binary only parses and dispatches).

use clap::{Args, Parser, Subcommand};

use crate::capacity::{self, TABLE_MONITORS, TABLE_TASK_MS};
use crate::policy::{DEFAULT_PERIOD_MS, DEFAULT_PROCESSES};

/// funcscale: run function-task worker pools on Kubernetes, sized from the work waiting in Redis.
#[derive(Parser, Debug)]
#[command(name = "funcscale-operator", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the operator: controllers for FuncWorkerPool and FuncQueue, the Redis poller,
    /// `/metrics`, `/healthz`, `/readyz`, leader election.
    Run(Box<crate::cli_run::RunArgs>),
    /// Print the CustomResourceDefinitions (FuncQueue, FuncWorkerPool) as YAML.
    Crd,
    /// Plan capacity: pods needed for M scheduled executions of T ms per period.
    Capacity(CapacityArgs),
    /// Grade funcscale's policy on load traces (built-in, or CSV files: --trace) against
    /// yardsticks computed in the same run: the work bound, KEDA tuned over a grid of its
    /// settings, KEDA with its defaults, and an HPA on CPU.
    Simulate(SimulateArgs),
}

/// Arguments of `simulate`.
#[derive(Args, Debug)]
pub struct SimulateArgs {
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
pub fn simulate(args: &SimulateArgs) -> Result<String, UsageError> {
    use crate::policy::PolicyConfig;
    use crate::sim::{self, SimConfig, Trace};
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
        traces.extend(sim::standard_traces());
    }
    for path in &args.traces {
        traces.push(Trace::from_file(path).map_err(|e| UsageError(format!("--trace: {e}")))?);
    }
    let comparisons: Vec<_> = traces
        .iter()
        .map(|t| sim::compare(t, &cfg, &policy))
        .collect();
    if args.json {
        return Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(&comparisons).expect("JSON")
        ));
    }
    Ok(sim::render(&comparisons))
}

/// Arguments of `capacity`.
#[derive(Args, Debug)]
pub struct CapacityArgs {
    /// Scheduled executions per period (M); with --table a comma-separated list.
    #[arg(
        long,
        value_name = "M",
        value_delimiter = ',',
        allow_negative_numbers = true,
        value_parser = count
    )]
    pub monitors: Vec<u64>,
    /// Task time in milliseconds (T); with --table a comma-separated list.
    #[arg(
        long = "task-ms",
        value_name = "MS",
        value_delimiter = ',',
        allow_negative_numbers = true,
        value_parser = count
    )]
    pub task_ms: Vec<u64>,
    /// Processes per pod (c).
    #[arg(long, default_value_t = u64::from(DEFAULT_PROCESSES), allow_negative_numbers = true, value_parser = count)]
    pub processes: u64,
    /// Period in milliseconds (P).
    #[arg(long = "period-ms", default_value_t = DEFAULT_PERIOD_MS, allow_negative_numbers = true, value_parser = count)]
    pub period_ms: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Print a planning table over several M and T (defaults: M = 1000..100000, T = 100..5000 ms).
    #[arg(long)]
    pub table: bool,
}

/// A whole number >= 0, with a message that says so (clap's own says "invalid digit").
fn count(s: &str) -> Result<u64, String> {
    match s.trim().parse::<i128>() {
        Ok(n) if n < 0 => Err(format!(
            "{n} is negative: a count of at least 0 is expected"
        )),
        Ok(n) => u64::try_from(n).map_err(|_| format!("{n} is too large")),
        Err(_) => Err(format!("{s:?} is not a whole number")),
    }
}

/// A usage error: the message names the flag; the binary exits with code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Run `capacity` and return what to print.
pub fn capacity(args: &CapacityArgs) -> Result<String, UsageError> {
    let err = |e: capacity::CapacityError| UsageError(e.to_string());
    if args.table {
        let monitors = if args.monitors.is_empty() {
            TABLE_MONITORS.to_vec()
        } else {
            args.monitors.clone()
        };
        let task_ms = if args.task_ms.is_empty() {
            TABLE_TASK_MS.to_vec()
        } else {
            args.task_ms.clone()
        };
        let rows =
            capacity::table(&monitors, &task_ms, args.processes, args.period_ms).map_err(err)?;
        if args.json {
            let v = serde_json::json!({
                "processes": args.processes,
                "periodMs": args.period_ms,
                "baselineTaskMs": capacity::BASELINE_TASK_MS,
                "monitors": monitors,
                "rows": rows,
            });
            return Ok(format!(
                "{}\n",
                serde_json::to_string_pretty(&v).expect("JSON")
            ));
        }
        return Ok(capacity::render_table(
            &monitors,
            &rows,
            args.processes,
            args.period_ms,
        ));
    }
    let one = |v: &[u64], flag: &str| match v {
        [x] => Ok(*x),
        [] => Err(UsageError(format!("{flag} is required (or use --table)"))),
        _ => Err(UsageError(format!(
            "{flag} takes one value without --table"
        ))),
    };
    let m = one(&args.monitors, "--monitors")?;
    let t = one(&args.task_ms, "--task-ms")?;
    let p = capacity::plan(m, t, args.processes, args.period_ms).map_err(err)?;
    if args.json {
        Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(&p).expect("JSON")
        ))
    } else {
        Ok(capacity::render_plan(&p))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, Command, SimulateArgs, simulate};

    fn parse_err(args: &[&str]) -> String {
        let argv = std::iter::once("funcscale-operator").chain(args.iter().copied());
        Cli::try_parse_from(argv).unwrap_err().to_string()
    }

    #[test]
    fn capacity_flags_say_what_is_wrong_and_name_the_flag() {
        let e = parse_err(&["capacity", "--monitors", "-5", "--task-ms", "500"]);
        assert!(
            e.contains("--monitors") && e.contains("-5 is negative"),
            "{e}"
        );
        let e = parse_err(&[
            "capacity",
            "--monitors",
            "10",
            "--task-ms",
            "1,x",
            "--table",
        ]);
        assert!(
            e.contains("--task-ms") && e.contains("\"x\" is not a whole number"),
            "{e}"
        );
        let e = parse_err(&[
            "capacity",
            "--monitors",
            "10",
            "--task-ms",
            "5",
            "--processes",
            "-1",
        ]);
        assert!(e.contains("--processes") && e.contains("negative"), "{e}");
        assert!(
            Cli::try_parse_from([
                "funcscale-operator",
                "capacity",
                "--monitors",
                "10000",
                "--task-ms",
                "500"
            ])
            .is_ok()
        );
    }

    fn simulate_args(args: &[&str]) -> SimulateArgs {
        let cli = Cli::try_parse_from([&["funcscale-operator", "simulate"], args].concat())
            .expect("parses");
        match cli.command {
            Command::Simulate(a) => a,
            other => panic!("{other:?}"),
        }
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
