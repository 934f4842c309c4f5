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

    use super::Cli;

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

    /// The args the chart renders for a default Sentinel set with a sentinel password
    /// (charts/funcscale/ci/sentinel-values.yaml) parse; the username key needs the Secret.
    #[test]
    fn worker_sentinel_secret_flags_parse_as_the_chart_renders_them() {
        let argv = [
            "funcscale-operator",
            "run",
            "--worker-redis-sentinel-secret=redis-sentinel/password",
            "--worker-redis-sentinel-username-key=username",
        ];
        let super::Command::Run(r) = Cli::try_parse_from(argv).unwrap().command else {
            panic!("not run")
        };
        let s = r.worker_redis_sentinel_secret.unwrap();
        assert_eq!(
            (s.name.as_str(), s.key.as_str()),
            ("redis-sentinel", "password")
        );
        assert_eq!(
            r.worker_redis_sentinel_username_key.as_deref(),
            Some("username")
        );
        let e = parse_err(&["run", "--worker-redis-sentinel-username-key=username"]);
        assert!(e.contains("--worker-redis-sentinel-secret"), "{e}");
    }
}
