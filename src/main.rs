//! The `metakv` command.

#![forbid(unsafe_code)]

mod demo;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// metakv: a replicated key-value store for small, precious records.
#[derive(Debug, Parser)]
#[command(name = "metakv", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
        Command::Demo { users } => demo::run(users),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("metakv: {e}");
            ExitCode::FAILURE
        }
    }
}
