//! The `metakv` command.

#![forbid(unsafe_code)]

/// `println!` for the command's output: a closed standard output (`metakv ls b | head`) ends
/// the command quietly, where `println!` would panic.
macro_rules! outln {
    ($($t:tt)*) => { $crate::write_out(format_args!($($t)*)) };
}

mod access;
mod admin;
mod args;
mod bench;
mod cli;
mod config;
mod demo;
mod fail;
mod maintenance;
mod output;
mod progress;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use metakv::{Node, NodeConfig};

/// metakv: a replicated key-value store for small, precious records.
#[derive(Debug, Parser)]
#[command(name = "metakv", version, about)]
struct Cli {
    /// Nodes of the cluster to talk to, comma-separated (`a:7379,b:7379`); a request goes to
    /// the first that answers [default: 127.0.0.1:7379].
    #[arg(long, global = true, env = "METAKV_ENDPOINT")]
    endpoint: Option<String>,
    /// Nodes and clients of another cluster id refuse each other [default: metakv].
    #[arg(long, global = true, env = "METAKV_CLUSTER_ID")]
    cluster_id: Option<String>,
    /// One JSON object per result (one per line for ls and watch).
    #[arg(long, global = true)]
    json: bool,
    /// Credentials file (the cluster CA and a user's certificate and key) for client commands
    /// [default: ./metakv-data/admin.creds, which the first node of a cluster writes].
    #[arg(long, global = true, env = "METAKV_CREDS")]
    creds: Option<PathBuf>,
    /// A user token (`metakv user add`, `user token`): the command acts for that user; the
    /// credentials file still gives the CA.
    #[arg(long, global = true, env = "METAKV_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Plain TCP, nothing verified: for a node, serve without TLS (anyone who reaches the port
    /// can read every value and act as a member); for a command, talk to such a node.
    #[arg(long, global = true)]
    insecure: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Client(cli::ClientCmd),
    /// Run a node. With no flags: node 1 in ./metakv-data on 127.0.0.1:7379, a single-node
    /// cluster initialized on first start.
    Serve {
        /// A TOML file with any of these settings and more (the README's "Configuration
        /// file" lists every key); flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// This node's id [default: 1].
        #[arg(long)]
        id: Option<u64>,
        /// [default: metakv-data]
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Address to listen on (port 0: any free port; the bound address is printed)
        /// [default: 127.0.0.1:7379].
        #[arg(long)]
        listen: Option<String>,
        /// Address the other nodes dial, if not the listen address.
        #[arg(long)]
        advertise: Option<String>,
        /// A member of a running cluster to join (a new node only; a restart needs no join).
        #[arg(long)]
        join: Option<String>,
        /// The join token (`metakv cluster join-token`) that gets a new node its certificate
        /// from the member it joins through; also read from METAKV_JOIN_TOKEN.
        #[arg(
            long,
            env = "METAKV_JOIN_TOKEN",
            hide_env_values = true,
            requires = "join"
        )]
        token: Option<String>,
        /// A directory (absolute) or s3://bucket/prefix that `bucket pause` may write to
        /// (repeat for more; adds to the config file's `[hibernation] archive_roots`).
        #[arg(long = "archive-root", value_name = "DIR")]
        archive_roots: Vec<String>,
        /// Time between tombstone GC jobs while this node leads (0: only on demand) [default: 1h].
        #[arg(long, value_parser = cli::parse_duration_ms)]
        gc_interval: Option<u64>,
        /// A GC job starts when the leader holds more tombstones than this (0: off)
        /// [default: 1000000].
        #[arg(long)]
        gc_threshold: Option<u64>,
        /// Tombstones younger than this are kept (watchers and compare-and-set see deletes)
        /// [default: 10m].
        #[arg(long, value_parser = cli::parse_duration_ms)]
        gc_min_age: Option<u64>,
    },
    /// Closed-loop durable writes against a cluster: writes/s and p50/p99/max latency.
    /// Without --endpoint it starts its own 3-node cluster in a temporary directory.
    Bench(bench::BenchArgs),
    /// Walk through the store in a temporary directory: users, deletes, tombstone GC,
    /// compaction, pause and resume of a bucket, integrity check.
    Demo {
        /// How many user records to write.
        #[arg(long, default_value_t = 5000)]
        users: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Client(cmd) => {
            let raw = cli.endpoint.as_deref().unwrap_or("127.0.0.1:7379");
            let endpoints = match cli::endpoints(raw) {
                Ok(e) => e,
                Err(why) => return fail::usage_error(cli.json, &why),
            };
            let cluster_id = cli.cluster_id.unwrap_or_else(|| "metakv".into());
            let security = match cmd.is_offline() {
                // It builds a client it never uses: nothing is dialed.
                true => cli::Security::Insecure,
                false => match cli::security(cli.insecure, cli.creds.as_deref(), cli.token) {
                    Ok(s) => s,
                    Err(why) => return fail::usage_error(cli.json, &why),
                },
            };
            return cli::run(endpoints, cluster_id, security, cli.json, cmd);
        }
        Command::Demo { users } => demo::run(users),
        Command::Bench(args) => {
            let endpoints = match cli.endpoint.as_deref().map(cli::endpoints).transpose() {
                Ok(e) => e,
                Err(why) => return fail::usage_error(cli.json, &why),
            };
            bench::run(
                args,
                endpoints,
                cli.cluster_id.unwrap_or_else(|| "metakv".into()),
                cli.insecure,
                cli.creds,
            )
        }
        Command::Serve {
            config,
            id,
            data_dir,
            listen,
            advertise,
            join,
            token,
            archive_roots,
            gc_interval,
            gc_threshold,
            gc_min_age,
        } => {
            let flags = config::Flags {
                id,
                data_dir,
                listen,
                advertise,
                join,
                token,
                archive_roots,
                insecure: cli.insecure,
                cluster_id: cli.cluster_id,
                gc_interval,
                gc_threshold,
                gc_min_age,
            };
            let resolved = config
                .as_deref()
                .map_or_else(|| Ok(config::FileConfig::default()), config::read)
                .and_then(|file| config::resolve(file, flags))
                .map_err(|e| match &config {
                    Some(path) => e.replacen("config:", &format!("config {}:", path.display()), 1),
                    None => e,
                });
            match resolved {
                Ok(config) => match serve(config) {
                    // A node refused before it started (a setting out of range, a data dir of
                    // another node or cluster) is a usage error, like a bad flag.
                    Err(e)
                        if e.downcast_ref::<metakv::Error>()
                            .and_then(|e| e.rejection_kind())
                            == Some(metakv::RejectionKind::Invalid) =>
                    {
                        eprintln!("metakv: {e}");
                        return ExitCode::from(2);
                    }
                    other => other,
                },
                Err(e) => {
                    eprintln!("metakv: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("metakv: {e}");
            // A library error keeps its code (the README's table); anything else is 1.
            match e.downcast_ref::<metakv::Error>() {
                Some(e) => ExitCode::from(fail::Fail::from(e.clone()).0),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// Runs a node until SIGTERM or Ctrl-C, then stops it cleanly.
fn serve(config: NodeConfig) -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(log_filter()?)
        // Colours only for a person at a terminal, never into a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let node = Node::start(config).await?;
        if node.addr() == node.listen_addr() {
            outln!("metakv node {} listening on {}", node.id(), node.addr());
        } else {
            outln!(
                "metakv node {} listening on {}, advertised as {}",
                node.id(),
                node.listen_addr(),
                node.addr()
            );
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            // The node has said why (once); the process exits 1, and a restart on the same
            // files, once the cause is gone, brings the node back with everything it had.
            why = node.failed() => return Err(why.into()),
        }
        tracing::info!("stopping");
        node.shutdown().await;
        Ok(())
    })
}

/// The log filter: `METAKV_LOG` (tracing's `EnvFilter` syntax), else `warn,metakv=info`. A
/// `METAKV_LOG` that does not parse is an error, not silently the default.
fn log_filter() -> Result<tracing_subscriber::EnvFilter, Box<dyn std::error::Error>> {
    match std::env::var("METAKV_LOG") {
        Err(_) => Ok("warn,metakv=info".into()),
        Ok(spec) => tracing_subscriber::EnvFilter::try_new(&spec).map_err(|e| {
            format!("METAKV_LOG={spec:?} is not a log filter ({e}); for example warn,metakv=debug")
                .into()
        }),
    }
}

/// Writes one line of the command's output (see `outln!`). A reader that went away ends the
/// process with exit 0 and no message: it asked for no more.
fn write_out(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            // exit runs no destructors: a temporary directory goes here, or it would stay.
            if let Some(dir) = scratch().lock().ok().and_then(|mut d| d.take()) {
                let _ = std::fs::remove_dir_all(dir);
            }
            std::process::exit(0);
        }
        eprintln!("metakv: writing to standard output: {e}");
        std::process::exit(1);
    }
}

/// The temporary directory of a running `demo` or `bench`, removed if the process has to end
/// early (its reader went away).
fn scratch() -> &'static std::sync::Mutex<Option<PathBuf>> {
    static SCRATCH: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);
    &SCRATCH
}

/// Names the command's temporary directory (see [`scratch`]).
pub(crate) fn remove_on_early_exit(dir: &std::path::Path) {
    if let Ok(mut d) = scratch().lock() {
        *d = Some(dir.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command, argument and option has a line of help, and none points at a source
    /// file (`--help` is what a user reads).
    #[test]
    fn every_command_argument_and_option_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name()).trim().to_owned();
            if cmd.get_about().is_none() {
                missing.push(format!("`{path}` has no help"));
            }
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default()
                    + &arg
                        .get_long_help()
                        .map(|h| h.to_string())
                        .unwrap_or_default();
                if help.trim().is_empty() {
                    missing.push(format!("`{path}`: {id} has no help"));
                }
                if help.contains("src/") {
                    missing.push(format!("`{path}`: {id}'s help points at a source file"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "{missing:#?}");
    }
}
