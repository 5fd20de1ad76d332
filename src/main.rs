//! The `interlock` binary: parses the command line, sets up logging and the runtime, and
//! hands over to the library.

use clap::Parser;

/// mimalloc: glibc's malloc spent nearly half of a 10k-service compile in chunk
/// consolidation, and the data plane allocates per request too.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use interlock::cli::{Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let command = cli.command.unwrap_or(Command::Run(cli.run));
    if let Command::Certs(args) = &command {
        return match interlock::cli::certs(args) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("interlock: {e:#}");
                std::process::ExitCode::from(2)
            }
        };
    }
    if let Command::Health(args) = &command {
        return interlock::health::run(args);
    }
    // Workers: --threads, else the CPUs this process may run on (its affinity mask). On one
    // CPU a current-thread runtime does the same work without work-stealing queues and
    // cross-thread wake-ups.
    let threads = match &command {
        Command::Run(r) => r.serve.threads,
        Command::Proxy(p) => p.serve.threads,
        _ => None,
    }
    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    .max(1);
    let mut rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    rt.enable_all();
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("interlock: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match command {
            Command::Check(c) => interlock::cli::check(&c).await,
            Command::Run(r) => interlock::app::run(r.run_config()?).await.map(|()| true),
            Command::Proxy(p) => interlock::app::run(p.run_config()?).await.map(|()| true),
            Command::Controller(c) => interlock::controller::run(c.controller_config()?)
                .await
                .map(|()| true),
            Command::Certs(_) | Command::Health(_) => Ok(true),
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
    // The h2 crate WARNs of what clients do wrong (reset floods, unasked PING acks): a
    // client would control the log's volume. interlock counts and summarises those itself
    // (proxy/misbehaviour.rs); h2's own lines show only when INTERLOCK_LOG names h2.
    let wanted = std::env::var("INTERLOCK_LOG").unwrap_or_else(|_| "info".into());
    let directives = if wanted.contains("h2") {
        wanted
    } else {
        format!("{wanted},h2=error")
    };
    let filter =
        EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info,h2=error"));
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
