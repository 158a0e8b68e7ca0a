//! `kdit sandbox`: a local, stateful server that behaves like Klaviyo's API (placeholder).

/// Options of `kdit sandbox`.
#[derive(Debug, Clone, clap::Args)]
pub struct SandboxArgs {
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 4010)]
    pub port: u16,
}

/// Runs the sandbox until stopped.
pub async fn run(_args: SandboxArgs) -> anyhow::Result<()> {
    anyhow::bail!("the sandbox is not built yet")
}
