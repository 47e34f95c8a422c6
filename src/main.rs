//! The `carevault` binary: parses the command line and hands it to `cli::run`.

use std::process::ExitCode;

use clap::Parser;

#[actix_web::main]
async fn main() -> ExitCode {
    carevault::cli::run(carevault::cli::Cli::parse()).await
}
