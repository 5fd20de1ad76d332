//! The `interlock` binary: parses the command line, sets up logging and the runtime, and
//! hands over to the library.

use clap::Parser;
use interlock::cli::{Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let (run, check) = match cli.command {
        None => (Some(cli.run), None),
        Some(Command::Run(r)) => (Some(r), None),
        Some(Command::Check(c)) => (None, Some(c)),
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(threads) = run.as_ref().and_then(|r| r.threads) {
        rt.worker_threads(threads.max(1));
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("interlock: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        if let Some(c) = check {
            return interlock::cli::check(&c).await;
        }
        let cfg = run.map(|r| r.run_config()).transpose()?;
        match cfg {
            Some(cfg) => interlock::app::run(cfg).await.map(|()| true),
            None => Ok(true),
        }
    });
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("interlock: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn init_logging(format: &str) {
    let filter =
        EnvFilter::try_from_env("INTERLOCK_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}
