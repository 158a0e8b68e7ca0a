use clap::Parser;
use kdit::cli::{Cli, Command};
use kdit::exit::ExitStatus;

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let status = rt.block_on(async {
        match cli.command {
            Command::Sandbox(args) => match kdit::sandbox::run(args).await {
                Ok(()) => ExitStatus::Success,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitStatus::Failure
                }
            },
            Command::Query(args) => match args.command {
                kdit::inspect::QueryCommand::Run(a) => {
                    report(kdit::inspect::query_run(&a, &mut std::io::stdout()).await)
                }
            },
            Command::Check(args) => {
                match kdit::inspect::check(&args, &mut std::io::stdout()).await {
                    Ok(true) => ExitStatus::Success,
                    Ok(false) => ExitStatus::Failure,
                    Err(e) => report::<()>(Err(e)),
                }
            }
            Command::Preview(args) => {
                report(kdit::inspect::preview(&args, &mut std::io::stdout()).await)
            }
            Command::Bench(args) => match args.command {
                kdit::bench::BenchCommand::Source(a) => {
                    report(kdit::bench::bench_source(&a, &mut std::io::stdout()).await)
                }
            },
        }
    });
    std::process::exit(status.code());
}

fn report<T>(r: anyhow::Result<T>) -> ExitStatus {
    match r {
        Ok(_) => ExitStatus::Success,
        Err(e) => {
            eprintln!("error: {e:#}");
            let cancelled = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<kdit::source::SourceError>(),
                    Some(kdit::source::SourceError::Cancelled { .. })
                ) || matches!(
                    c.downcast_ref::<kdit::rows::RowsError>(),
                    Some(kdit::rows::RowsError::Source(
                        kdit::source::SourceError::Cancelled { .. }
                    ))
                )
            });
            if cancelled {
                ExitStatus::Interrupted
            } else {
                ExitStatus::Failure
            }
        }
    }
}
