//! `kdit segment preview`: a segment's members as Klaviyo computed them.

use std::time::Duration;

use crate::apply::audience::preview;
use crate::output;

/// `kdit segment …` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum SegmentCommand {
    /// Show a segment's members as Klaviyo computed them (waits while it is processing).
    Preview(SegmentPreviewArgs),
}

/// Options of `kdit segment preview`.
#[derive(Debug, Clone, clap::Args)]
pub struct SegmentPreviewArgs {
    /// The segment's name in Klaviyo.
    pub name: String,
    /// Most members shown.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Mask emails and phone numbers.
    #[arg(long)]
    pub mask: bool,
    /// Longest wait, in seconds, for Klaviyo to finish computing the segment.
    #[arg(long, default_value_t = 30)]
    pub wait: u64,
    #[command(flatten)]
    pub klaviyo: crate::commands::connect::KlaviyoArgs,
}

/// `kdit segment preview NAME`: prints one member a line.
pub async fn preview_command(args: &SegmentPreviewArgs) -> crate::exit::ExitStatus {
    let target = match crate::commands::connect::Target::new(&args.klaviyo).await {
        Ok(t) => t,
        Err(e) => return crate::commands::fail(e),
    };
    match preview(
        &target.client,
        &args.name,
        args.limit,
        Duration::from_secs(args.wait),
    )
    .await
    {
        Ok(members) => {
            for m in &members {
                if args.mask {
                    output::data_line(crate::plan::mask(m));
                } else {
                    output::data_line(m);
                }
            }
            output::say_line(format_args!(
                "{} of segment \"{}\" shown (--limit {})",
                output::thousands(members.len() as u64),
                args.name,
                args.limit
            ));
            crate::exit::ExitStatus::Success
        }
        Err(e) => crate::commands::fail(e),
    }
}
