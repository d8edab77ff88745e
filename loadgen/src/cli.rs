//! The command line: `run`, `bench`, `publish`, and the hidden `worker` that re-executes the
//! loadgen as a shardtally worker.
//!
//! Exit status: 0 every expectation held (or every event was acked), 1 an expectation failed or
//! the run could not complete, 2 a bad scenario file, app, flag or input line (with its
//! position).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Every expectation held.
pub(crate) const EXIT_OK: u8 = 0;
/// An expectation failed, or the run could not complete (a worker crashed on its own, the
/// database went away, …).
pub(crate) const EXIT_FAILED: u8 = 1;
/// A bad scenario file, Siddhi app, flag or input (nothing was started).
pub(crate) const EXIT_USAGE: u8 = 2;

/// shardtally load generator: replays scenario files against a shardtally cluster, injects
/// faults, checks the merged totals, and reports throughput and latency.
#[derive(Debug, Parser)]
#[command(name = "shardtally-loadgen", version)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run scenario files: spawn their cluster (or use a running one), publish their phases,
    /// fire their faults, check their expectations, and write a report for each.
    Run(RunArgs),
    /// Benchmark: events/s, ack latency, rows/s and memory of shardtally end to end, against
    /// the `naive` (one upsert per event) and `wire` (decode and discard) baselines. Exits 0
    /// whatever the figures; 1 when the counts are not exact.
    Bench(BenchArgs),
    /// Publish JSON lines from stdin (one object per line, keys = attributes) to running
    /// workers; exit 0 only when every event is acked.
    Publish(PublishArgs),
    /// Run as a shardtally worker (`shardtally-loadgen worker serve …` takes every
    /// `shardtally-worker` argument): how the loadgen starts its embedded clusters.
    #[command(hide = true, disable_help_flag = true, disable_version_flag = true)]
    Worker {
        /// The `shardtally-worker` arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<OsString>,
    },
}

/// `run SCENARIO.yaml…`.
#[derive(Debug, Args, Clone)]
pub(crate) struct RunArgs {
    /// Scenario files (YAML), run one after the other. All are checked before the first starts.
    #[arg(required = true, value_name = "SCENARIO.yaml")]
    pub(crate) scenarios: Vec<PathBuf>,
    /// Database the spawned workers share, instead of the scenario's `cluster.database`.
    /// A postgres:// or mysql:// URL names a server: each run creates a fresh database on it
    /// (`st_<scenario>_<random>`) and drops it afterwards. sqlite:FILE is used as is.
    /// [default: a fresh SQLite file in the run's results folder]. For a scenario with
    /// `cluster.endpoints`, the database the running cluster uses (read by the expectations).
    #[arg(long, env = "SHARDTALLY_LOADGEN_DATABASE_URL", value_name = "URL")]
    pub(crate) database_url: Option<String>,
    /// Where reports go: <DIR>/<scenario>/<UTC timestamp>/
    #[arg(
        long,
        env = "SHARDTALLY_RESULTS",
        default_value = "results",
        value_name = "DIR"
    )]
    pub(crate) results: PathBuf,
    /// Seed of the field generators, instead of the scenario's `seed`.
    #[arg(long, env = "SHARDTALLY_SEED", value_name = "N")]
    pub(crate) seed: Option<u64>,
    /// Keep the database created on a PostgreSQL/MySQL server after the run (its URL is
    /// printed).
    #[arg(long, env = "SHARDTALLY_KEEP_DATABASE")]
    pub(crate) keep_database: bool,
    /// Check and report `latency` expectations, but do not fail the run on them (WARN instead
    /// of FAIL): for shared or noisy machines such as CI, where timing is not a test.
    #[arg(long, env = "SHARDTALLY_ADVISORY_LATENCY")]
    pub(crate) advisory_latency: bool,
}

/// `bench`.
#[derive(Debug, Args, Clone)]
pub(crate) struct BenchArgs {
    /// Worker processes (spawned, sharing the database).
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub(crate) workers: usize,
    /// Publishers (one `Publisher` each, like separate gateways; in the loadgen's process).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub(crate) publishers: usize,
    /// Events sent through shardtally and through `wire` (`naive` takes a bounded sample).
    #[arg(long, default_value_t = 20_000_000, value_name = "N")]
    pub(crate) events: u64,
    /// Distinct keys (apiName, country, city); (country, city) is the aggregation's group-by
    /// key, distinct per key.
    #[arg(long, default_value_t = 1_000, value_name = "N")]
    pub(crate) keys: usize,
    /// The span of event time the events' timestamps cover.
    #[arg(long, default_value = "1h", value_parser = duration, value_name = "DURATION")]
    pub(crate) time_spread: Duration,
    /// How timestamps fill the span: `ascending` (a replay of the span in time order) or
    /// `random` (uniform over the span: every flush touches rows all over it).
    #[arg(long, value_enum, default_value = "ascending")]
    pub(crate) time_order: TimeOrderArg,
    /// Database server the workers share (postgres://… or mysql://…: a fresh database is
    /// created on it and dropped afterwards), or sqlite:FILE [default: a fresh SQLite file in
    /// the results folder].
    #[arg(long, env = "SHARDTALLY_LOADGEN_DATABASE_URL", value_name = "URL")]
    pub(crate) database_url: Option<String>,
    /// Which baselines to run besides shardtally.
    #[arg(long, value_enum, default_value = "all")]
    pub(crate) baseline: BaselineArg,
    /// The workers' flush interval.
    #[arg(long, default_value = "200ms", value_parser = duration, value_name = "DURATION")]
    pub(crate) flush_interval: Duration,
    /// Events per batch (the publisher's `batch_max_events`) [default: the publisher's default].
    #[arg(long, value_name = "N")]
    pub(crate) batch_events: Option<u32>,
    /// Unacked batches per connection (the publisher's `max_in_flight_per_connection`)
    /// [default: the publisher's default].
    #[arg(long, value_name = "N")]
    pub(crate) in_flight: Option<usize>,
    /// Consecutive batches a publisher sends to one worker before the next one's turn (the
    /// publisher's `batches_per_turn`; 1 is plain round-robin).
    #[arg(
        long,
        value_name = "N",
        default_value_t = shardtally_publisher::DEFAULT_BATCHES_PER_TURN,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    pub(crate) batches_per_turn: usize,
    /// Publish at this many events per second in total (open model) instead of as fast as
    /// acks allow.
    #[arg(long, value_name = "N")]
    pub(crate) rate: Option<f64>,
    /// Seconds of a second shardtally run at half the measured rate (open model), for ack
    /// latency; 0 skips it.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub(crate) half_rate_seconds: f64,
    /// Seconds the `naive` baseline runs (its rate is extrapolated to --events).
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    pub(crate) naive_seconds: f64,
    /// Seconds of 1,000-row commit transactions measuring the database's batched write rate;
    /// 0 skips it.
    #[arg(long, default_value_t = 3.0, value_name = "SECONDS")]
    pub(crate) calibrate_seconds: f64,
    /// Where reports go: <DIR>/bench/<UTC timestamp>/
    #[arg(
        long,
        env = "SHARDTALLY_RESULTS",
        default_value = "results",
        value_name = "DIR"
    )]
    pub(crate) results: PathBuf,
    /// Seed of the keys and timestamps.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub(crate) seed: u64,
    /// Keep the database created on a PostgreSQL/MySQL server after the run.
    #[arg(long)]
    pub(crate) keep_database: bool,
}

/// `--time-order`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum TimeOrderArg {
    /// A replay of the span, in time order.
    Ascending,
    /// Uniformly anywhere in the span.
    Random,
}

impl TimeOrderArg {
    pub(crate) fn name(self) -> &'static str {
        match self {
            TimeOrderArg::Ascending => "ascending",
            TimeOrderArg::Random => "random",
        }
    }
}

/// `--baseline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BaselineArg {
    /// One upsert statement per event, autocommit (a bounded sample, extrapolated).
    Naive,
    /// Workers that decode, fold and discard: the protocol's ceiling.
    Wire,
    /// Both.
    All,
    /// Neither.
    None,
}

impl BaselineArg {
    pub(crate) fn name(self) -> &'static str {
        match self {
            BaselineArg::Naive => "naive",
            BaselineArg::Wire => "wire",
            BaselineArg::All => "all",
            BaselineArg::None => "none",
        }
    }
}

fn duration(text: &str) -> Result<Duration, String> {
    shardtally_worker::config::parse_duration("duration", text).map_err(|e| e.to_string())
}

/// `publish --endpoints URLSET < events.jsonl`.
#[derive(Debug, Args, Clone)]
pub(crate) struct PublishArgs {
    /// Receiver URL set of the workers: {tcp://h:9611,tcp://h:9612} (round-robin), {a|b}
    /// (failover), or tcp://h:9611.
    #[arg(long, env = "SHARDTALLY_ENDPOINTS", value_name = "URLSET")]
    pub(crate) endpoints: String,
    /// The stream the events belong to [default: the app's only stream].
    #[arg(long, env = "SHARDTALLY_STREAM", value_name = "NAME")]
    pub(crate) stream: Option<String>,
    /// Events per second (a constant arrival rate) [default: as fast as the workers ack].
    #[arg(long, env = "SHARDTALLY_RATE", value_name = "N")]
    pub(crate) rate: Option<f64>,
    /// The Siddhi app whose stream schema the lines are checked against [default: the schema
    /// the first worker announces].
    #[arg(long, env = "SHARDTALLY_APP", value_name = "FILE")]
    pub(crate) app: Option<PathBuf>,
    /// File holding the token the workers expect.
    #[arg(long, env = "SHARDTALLY_AUTH_TOKEN_FILE", value_name = "FILE")]
    pub(crate) auth_token_file: Option<PathBuf>,
    /// CA certificates (PEM) trusted for tls:// workers [default: the system trust store].
    #[arg(long, env = "SHARDTALLY_TLS_CA", value_name = "FILE")]
    pub(crate) tls_ca: Option<PathBuf>,
    /// Client certificate chain (PEM) for workers that require one (with --tls-client-key).
    #[arg(
        long,
        env = "SHARDTALLY_TLS_CLIENT_CERT",
        value_name = "FILE",
        requires = "tls_client_key"
    )]
    pub(crate) tls_client_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-client-cert.
    #[arg(
        long,
        env = "SHARDTALLY_TLS_CLIENT_KEY",
        value_name = "FILE",
        requires = "tls_client_cert"
    )]
    pub(crate) tls_client_key: Option<PathBuf>,
}

/// Parses `std::env::args` and runs the command.
pub(crate) fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { EXIT_OK });
        }
    };
    match cli.command {
        Command::Worker { args } => shardtally_worker::cli::main_from(
            std::iter::once(OsString::from("shardtally-worker")).chain(args),
        ),
        Command::Run(args) => with_runtime("error", |rt| rt.block_on(crate::run::run(args))),
        Command::Bench(args) => with_runtime("warn,sqlx=error", |rt| {
            rt.block_on(crate::bench::bench(args))
        }),
        Command::Publish(args) => {
            with_runtime("warn", |rt| rt.block_on(crate::publish::publish(args)))
        }
    }
}

/// Starts logging (`SHARDTALLY_LOG`, else `default_level`) and a runtime, and runs `f` in it.
fn with_runtime(default_level: &str, f: impl FnOnce(&tokio::runtime::Runtime) -> u8) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHARDTALLY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    ExitCode::from(f(&runtime))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn worker_forwards_every_argument() {
        let cli = Cli::try_parse_from([
            "shardtally-loadgen",
            "worker",
            "serve",
            "--node-id",
            "n1",
            "--help",
        ])
        .unwrap();
        let Command::Worker { args } = cli.command else {
            panic!("not the worker subcommand");
        };
        assert_eq!(args, ["serve", "--node-id", "n1", "--help"]);
    }

    #[test]
    fn run_takes_several_scenarios_and_defaults_results() {
        let cli = Cli::try_parse_from([
            "shardtally-loadgen",
            "run",
            "a.yaml",
            "b.yaml",
            "--seed",
            "7",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run");
        };
        assert_eq!(
            args.scenarios,
            [PathBuf::from("a.yaml"), PathBuf::from("b.yaml")]
        );
        assert_eq!(args.seed, Some(7));
        assert_eq!(args.results, PathBuf::from("results"));
        assert!(!args.keep_database);
    }

    #[test]
    fn bench_defaults_match_the_issue_workload() {
        let cli = Cli::try_parse_from(["shardtally-loadgen", "bench"]).unwrap();
        let Command::Bench(args) = cli.command else {
            panic!("not bench");
        };
        assert_eq!((args.workers, args.publishers, args.keys), (2, 1, 1000));
        assert_eq!(args.time_spread, Duration::from_secs(3600));
        assert_eq!(args.flush_interval, Duration::from_millis(200));
        assert_eq!(args.baseline, BaselineArg::All);
        assert_eq!(args.time_order, TimeOrderArg::Ascending);
        assert!(args.database_url.is_none() && args.rate.is_none());
        let cli = Cli::try_parse_from([
            "shardtally-loadgen",
            "bench",
            "--baseline",
            "wire",
            "--time-spread",
            "10m",
            "--time-order",
            "random",
        ])
        .unwrap();
        let Command::Bench(args) = cli.command else {
            panic!("not bench");
        };
        assert_eq!(args.baseline, BaselineArg::Wire);
        assert_eq!(args.time_spread, Duration::from_secs(600));
        assert_eq!(args.time_order, TimeOrderArg::Random);
        assert!(
            Cli::try_parse_from(["shardtally-loadgen", "bench", "--time-spread", "soon"]).is_err()
        );
    }

    #[test]
    fn run_needs_a_scenario() {
        assert!(Cli::try_parse_from(["shardtally-loadgen", "run"]).is_err());
    }
}
