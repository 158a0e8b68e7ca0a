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
        }
    });
    std::process::exit(status.code());
}
